"""core/ship/coreml_export.py: the export wrapper against the model in PyTorch (BERT and MobileBERT), the
ML Program and the updatable pipeline, read back from their specs (Core ML cannot predict on Linux)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alambic.errors import AlambicError
from alambic.ship import coreml_checks as cmc
from alambic.ship import coreml_export as cm
from tests.core.compress.test_onnx_export import padded_batch, tiny_classifier, tiny_data, torch_logits

LABELS = ["体育", "财经", "科技"]
MAX_LENGTH = 32


def reference(model, data) -> np.ndarray:
    from alambic.train.loop import predict

    rows, logits = predict(model, data, batch_size=16)
    return logits[np.argsort(rows)]


@pytest.mark.parametrize("student", ["roberta-l4", "mobilebert-adapter"])
def test_the_wrapper_gives_the_models_logits(student):
    model = tiny_classifier(student)
    batch = padded_batch(4, 13)  # the last row is half padding: the explicit mask is used
    ids, mask = batch["input_ids"].int(), batch["attention_mask"].int()
    with torch.no_grad():
        got = cm.wrapper(model, "logits")(ids, mask).numpy()
        probabilities = cm.wrapper(model)(ids, mask).numpy()
    expected = torch_logits(model, {k: v for k, v in batch.items() if k != "token_type_ids"})
    assert np.abs(got - expected).max() < 1e-5
    assert np.allclose(probabilities, torch.softmax(torch.from_numpy(expected), -1).numpy(), atol=1e-6)


@pytest.mark.parametrize("student", ["roberta-l4", "mobilebert-adapter"])
def test_parity_checks_pass_on_the_test_rows(student):
    model, data = tiny_classifier(student), tiny_data()
    checks = cmc.wrapper_parity(model, data, reference(model, data), max_traced=12)
    assert [c.name for c in checks] == ["wrapper vs PyTorch model (eager, padded batches)",
                                        "traced classifier vs PyTorch model (batch 1)",
                                        "traced encoder + head vs PyTorch model"]
    assert all(c.ok for c in checks), [c.value for c in checks]
    assert checks[0].data["examples"] == len(data) and checks[1].data["examples"] == 12


def test_a_traced_wrapper_takes_other_lengths():
    model = tiny_classifier("roberta-l4")
    traced = cm.trace(cm.wrapper(model, "logits"), MAX_LENGTH)  # traced at length 8
    for length in (3, 21):
        batch = padded_batch(1, length)
        with torch.no_grad():
            got = traced(batch["input_ids"].int(), batch["attention_mask"].int()).numpy()
        assert np.abs(got - torch_logits(model, batch)).max() < 1e-5


@pytest.fixture(scope="module")
def mobilebert_products(tmp_path_factory):
    """The MobileBERT adapter as both Core ML products, saved as an app receives them."""
    folder = tmp_path_factory.mktemp("coreml")
    model = tiny_classifier("mobilebert-adapter")
    classifier = cm.convert_classifier(model, LABELS, MAX_LENGTH)
    cm.describe(classifier, {"author": "tests", "license": "MIT", "description": "three topics",
                             "user": {"labels": LABELS, "max_length": MAX_LENGTH, "vocabulary": "vocab.txt"}})
    classifier.save(str(folder / "Classifier.mlpackage"))
    spec = cm.updatable_pipeline(model, LABELS, MAX_LENGTH, learning_rate=0.05, batch_size=4, epochs=3)
    cm.describe(spec, {"author": "tests", "user": {"labels": LABELS, "max_length": MAX_LENGTH,
                                                   "vocabulary": "vocab.txt"}})
    cm.save_spec(spec, folder / "UpdatableClassifier.mlmodel")
    return folder


def test_the_updatable_spec_has_one_updatable_layer_a_cross_entropy_loss_and_sgd(mobilebert_products):
    import coremltools as ct

    spec = ct.utils.load_spec(str(mobilebert_products / "UpdatableClassifier.mlmodel"))
    assert spec.WhichOneof("Type") == "pipelineClassifier" and spec.isUpdatable
    encoder, head = spec.pipelineClassifier.pipeline.models
    assert not encoder.isUpdatable and head.isUpdatable
    layers = [(m, layer) for m in (encoder.neuralNetwork, head.neuralNetworkClassifier) for layer in m.layers]
    updatable = [layer for _, layer in layers if layer.isUpdatable]
    assert [(u.name, u.WhichOneof("layer")) for u in updatable] == [("head", "innerProduct")]
    assert updatable[0].innerProduct.weights.isUpdatable and len(updatable[0].innerProduct.weights.floatValue)
    params = head.neuralNetworkClassifier.updateParams
    assert [loss.WhichOneof("LossLayerType") for loss in params.lossLayers] == ["categoricalCrossEntropyLossLayer"]
    assert params.lossLayers[0].categoricalCrossEntropyLossLayer.input == "label_probs"
    sgd = params.optimizer.sgdOptimizer
    assert params.optimizer.WhichOneof("OptimizerType") == "sgdOptimizer"
    assert sgd.learningRate.defaultValue == pytest.approx(0.05) and sgd.miniBatchSize.defaultValue == 4
    assert params.epochs.defaultValue == 3
    assert [(f.name, f.type.WhichOneof("Type")) for f in spec.description.trainingInput] == [
        ("input_ids", "multiArrayType"), ("attention_mask", "multiArrayType"), ("label", "stringType")]
    assert list(head.neuralNetworkClassifier.stringClassLabels.vector) == LABELS
    # the frozen encoder may be fp16: only the updatable head must stay fp32
    assert any(len(layer.innerProduct.weights.float16Value) for layer in encoder.neuralNetwork.layers
               if layer.WhichOneof("layer") == "innerProduct")


def test_both_products_pass_their_spec_checks(mobilebert_products):
    for checks in (cmc.check_classifier(mobilebert_products / "Classifier.mlpackage", MAX_LENGTH, int8=False),
                   cmc.check_updatable(mobilebert_products / "UpdatableClassifier.mlmodel", MAX_LENGTH)):
        assert all(c.ok is not False for c in checks), [(c.name, c.value) for c in checks]
    described = cmc.io_spec(cmc.load_spec(mobilebert_products / "Classifier.mlpackage"))
    assert described["inputs"] == [{"name": n, "type": "multiArrayType", "dtype": "INT32",
                                    "shape": [[1, 1], [1, MAX_LENGTH]]} for n in ("input_ids", "attention_mask")]
    assert [o["name"] for o in described["outputs"]] == ["label", "label_probs"]
    spec = cmc.load_spec(mobilebert_products / "Classifier.mlpackage")
    assert spec.description.metadata.author == "tests" and spec.description.metadata.license == "MIT"
    assert spec.description.metadata.userDefined["labels"] == '["体育", "财经", "科技"]'
    assert spec.description.input[0].shortDescription.startswith("token ids from the bundled tokenizer")


def test_int8_weights_shrink_the_package(tmp_path):
    model = tiny_classifier("roberta-l4")
    for int8 in (False, True):
        cm.convert_classifier(model, LABELS, MAX_LENGTH, int8=int8).save(str(tmp_path / f"{int8}.mlpackage"))
    assert cm.package_bytes(tmp_path / "True.mlpackage") < 0.6 * cm.package_bytes(tmp_path / "False.mlpackage")
    checks = {c.name: c for c in cmc.check_classifier(tmp_path / "True.mlpackage", MAX_LENGTH, int8=True)}
    assert checks["int8 weights"].ok and checks["int8 weights"].data["ops"]["constexpr_affine_dequantize"] > 0


def test_a_bad_target_is_refused():
    model = tiny_classifier("roberta-l4")
    with pytest.raises(AlambicError, match="target must be one of iOS15, iOS16"):
        cm.convert_classifier(model, LABELS, MAX_LENGTH, target="iOS14")
    with pytest.raises(AlambicError, match="int8 Core ML weights need target iOS16"):
        cm.convert_classifier(model, LABELS, MAX_LENGTH, target="iOS15", int8=True)


def test_an_int8_updatable_encoder_keeps_its_constants_exact():
    """Before: quantize_weights(nbits=8) took the position ids 0..511 to 8 bits too, so the phone
    read positions 0,1 as 0, 2,3 as 2, ...: 0.9 point of THUCNews test accuracy lost before any update."""
    spec = cm.updatable_pipeline(tiny_classifier("roberta-l4"), LABELS, MAX_LENGTH, encoder_bits=8)
    encoder = spec.pipelineClassifier.pipeline.models[0]
    layers = {layer.name: layer for layer in getattr(encoder, encoder.WhichOneof("Type")).layers}
    positions = layers["embeddings.position_ids"].loadConstantND.data
    assert not positions.quantization.numberOfBits and list(positions.floatValue)[:5] == [0, 1, 2, 3, 4]
    weights = [layer.innerProduct.weights for layer in layers.values() if layer.WhichOneof("layer") == "innerProduct"]
    assert weights and all(w.quantization.numberOfBits == 8 for w in weights)  # the weights are still int8
