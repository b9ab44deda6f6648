"""One contract per plugin kind, run over every registered plugin of that kind.

A kind that gains its first built-in plugin must gain a contract here (see `test_every_kind_with_plugins_has_a_contract`).
"""

from __future__ import annotations

import inspect

import pytest

from alambic.manager import build_registry, get_plugin_manager
from tests.plugins.test_exporters import contract_exporters
from tests.plugins.test_selection import contract_selection_policies

REGISTRY = build_registry(get_plugin_manager(env={}))
ALL = [(kind, e) for kind, reg in REGISTRY.kinds.items() for e in reg.entries.values()]


def contract_datasets(cls: type) -> None:
    assert callable(getattr(cls(), "load", None)), "a data source needs load(config, report)"
    assert list(inspect.signature(cls().load).parameters) == ["config", "report"]


def contract_model_sources(cls: type) -> None:
    """Without converting anything: conversions are tested per source (they take seconds)."""
    from alambic.model_sources import ModelSource, parse_packaged

    assert issubclass(cls, ModelSource), "a model source subclasses alambic.model_sources.ModelSource"
    assert cls.models, "a model source names at least one model"
    assert all(parse_packaged(f"{cls.id}:{model}") == (cls.id, model) for model in cls.models), \
        "'<id>:<model>' must parse as a packaged name"
    assert type(cls.version) is int, "version: an int, bumped when convert() writes something else"
    why = cls.available()
    assert why is None or (isinstance(why, str) and why), "available(): None, or why not and how to fix it"
    for method in ("fingerprint", "convert"):
        assert getattr(cls, method).__func__ is not getattr(ModelSource, method).__func__, f"define {method}()"


def contract_students(cls: type) -> None:
    import torch

    student = cls()
    model = student.build(num_labels=3, layers=1, hidden=32, heads=2, ffn=64)
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert logits.shape == (2, 3)
    assert model.config.vocab_size == 21128, "students share bert-base-chinese's vocabulary"


def contract_distill_losses(cls: type) -> None:
    import torch
    from transformers import BertForSequenceClassification

    from alambic.train.losses import NEEDS, DistillLoss, output_flags
    from alambic.train.models import Size, bert_config

    assert issubclass(cls, DistillLoss), "a distillation loss subclasses alambic.train.losses.DistillLoss"
    assert cls.needs and cls.needs <= NEEDS, f"needs must be a non-empty subset of {sorted(NEEDS)}"
    teacher_config = bert_config(Size(layers=2, hidden=48, heads=4, ffn=96), num_labels=3)
    student_config = bert_config(Size(layers=1, hidden=32, heads=2, ffn=64), num_labels=3)
    loss = cls(teacher_config, student_config, layer_map=None)
    assert isinstance(loss, torch.nn.Module) and loss.id == cls.id
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(teacher_config).eval()
    student = BertForSequenceClassification(student_config)
    ids = torch.randint(0, 21128, (2, 7))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 2])}
    batch["attention_mask"][1, 5:] = 0
    flags = output_flags([loss])
    with torch.no_grad():
        teacher_out = teacher(input_ids=ids, attention_mask=batch["attention_mask"], **flags)
    student_out = student(input_ids=ids, attention_mask=batch["attention_mask"], **flags)
    value = loss(student_out, teacher_out, batch)
    assert isinstance(value, torch.Tensor) and value.ndim == 0, "forward returns a scalar tensor"
    assert torch.isfinite(value) and value.requires_grad, "a finite loss the student learns from"


def contract_pruners(cls: type) -> None:
    import copy
    import json
    import tempfile
    from dataclasses import fields, is_dataclass
    from pathlib import Path

    import torch
    from datasets import ClassLabel, Dataset, Features, List, Value
    from transformers import BertForSequenceClassification, BertTokenizerFast

    from alambic.compress.pruning import PruneContext, Pruner, PruneResult
    from alambic.errors import AlambicError
    from alambic.train.models import Size, bert_config, params

    assert issubclass(cls, Pruner), "a pruner subclasses alambic.compress.pruning.Pruner"
    assert is_dataclass(cls.Options) and cls.Options.__dataclass_params__.frozen, "Options: a frozen dataclass"
    strength = "amount" in {f.name for f in fields(cls.Options)}
    options = cls.options(0.5) if strength else cls.options()
    with pytest.raises(AlambicError, match="unknown option"):
        cls.options(0.5, no_such_option=1) if strength else cls.options(no_such_option=1)
    half = cls.half(options)
    assert (half.amount == 0.25) if strength else half is None, "half(): half the amount, None without one"

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"中国新闻体育股市科技的是"]
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
        tokenizer = BertTokenizerFast(vocab_file=str(Path(folder) / "vocab.txt"), do_lower_case=True)
    texts = ["中国新闻", "体育新闻", "股市的新闻", "科技是", "中国体育", "新闻科技"] * 3
    ids = tokenizer(texts)["input_ids"]
    features = Features({"input_ids": List(Value("int32")), "attention_mask": List(Value("int8")),
                         "token_type_ids": List(Value("int8")), "label": ClassLabel(names=["a", "b", "c"]),
                         "length": Value("int64")})
    split = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids],
                               "token_type_ids": [[0] * len(r) for r in ids], "label": [i % 3 for i in range(len(ids))],
                               "length": [len(r) for r in ids]}, features=features)
    context = PruneContext(validation=split, train=split.select(range(4)), tokenizer=tokenizer, batches=2, batch_size=4)
    torch.manual_seed(0)
    config = bert_config(Size(layers=2, hidden=32, heads=4, ffn=64), num_labels=3, vocab_size=len(tokens))
    model = BertForSequenceClassification(config).eval()
    state = copy.deepcopy(model.state_dict())

    result = cls.apply(model, options, context)
    assert isinstance(result, PruneResult) and result.report["pruner"] == cls.id
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()), "apply() leaves its input alone"
    assert result.report["params_before"] == params(model) >= result.report["params_after"] == params(result.model)
    json.dumps(result.report)
    enc = result.tokenizer(["中国新闻"], return_tensors="pt")
    with torch.no_grad():
        assert result.model.eval()(**enc).logits.shape == (1, 3)


def contract_quantizers(cls: type) -> None:
    import dataclasses
    import tempfile
    from pathlib import Path

    from datasets import Dataset
    from transformers import BertForSequenceClassification

    from alambic.compress.latency import RUNTIMES, UNTIMED
    from alambic.compress.quantization import QuantContext, Quantizer, QuantSource
    from alambic.train.models import Size, bert_config

    assert issubclass(cls, Quantizer), "a quantizer subclasses alambic.compress.quantization.Quantizer"
    known = (*RUNTIMES, *UNTIMED)  # a runtime measured here, or one said to be measured for size and accuracy only
    assert cls.runtime in known and set(cls.runtimes) <= set(known)
    assert dataclasses.is_dataclass(cls.Options) and cls.Options.__dataclass_params__.frozen
    first_line = cls.__doc__.strip().splitlines()[0]
    assert any(name in first_line for name in ("ONNX Runtime", "PyTorch", "Core ML")), "the first line names the runtime"
    options = cls.options()  # the defaults are valid
    model = BertForSequenceClassification(bert_config(Size(layers=1, hidden=32, heads=2, ffn=64), 3)).eval()
    rows = [[101, *range(1000 + i, 1004 + i), 102] for i in range(8)]
    calibration = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * 6] * 8,
                                     "token_type_ids": [[0] * 6] * 8, "label": [0, 1, 2] * 2 + [0, 1]})
    with tempfile.TemporaryDirectory() as tmp:
        result = cls.apply(QuantSource(model=model), options, QuantContext(Path(tmp), calibration))
        assert result.runtime == cls.runtime_of(options), "the output runs where the quantizer says"
        assert result.files and all(f.exists() for f in result.files)  # a file, or a package folder (.mlpackage)
        # a module when the output runs in PyTorch, or holds the shipped weights of a runtime that cannot run here
        assert (result.model is not None) == (result.runtime == "pytorch" or result.runtime in UNTIMED)
        assert result.report["quantizer"] == cls.id


CONTRACTS = {
    "datasets": contract_datasets,
    "model_sources": contract_model_sources,
    "students": contract_students,
    "distill_losses": contract_distill_losses,
    "pruners": contract_pruners,
    "quantizers": contract_quantizers,
    "selection_policies": contract_selection_policies,
    "exporters": contract_exporters,
}


def test_builtins_loaded_without_failures():
    assert REGISTRY.failures == []


def test_every_kind_with_plugins_has_a_contract():
    kinds = {kind for kind, _ in ALL}
    assert kinds <= set(CONTRACTS), f"write a contract for: {sorted(kinds - set(CONTRACTS))}"


@pytest.mark.parametrize("kind, entry", ALL, ids=[f"{k}:{e.id}" for k, e in ALL])
def test_plugin_contract(kind, entry):
    assert entry.description, f"{entry.id}: the class docstring's first line describes it"
    CONTRACTS[kind](entry.cls)
