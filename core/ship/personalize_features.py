"""The frozen encoder's pooled vectors, as the updatable model computes them, for the head to learn on.

::

    encoder = Encoder.load(model, "stage/model", coreml_dir, weights="mlmodel")
    encoder.loaded          # "412 of 412 tensors from UpdatableClassifier.mlmodel (int8 dequantized ...)"
    features = encoder.features(texts, quiet=False)      # (N, H) float32

Core ML cannot run on Linux, so the encoder runs in PyTorch: the export wrapper (its ``pooled``
output, :mod:`alambic.ship.coreml_export`), the very graph the converter was given, built from the
compress stage's model. With ``weights="mlmodel"`` (the default) its weights are then replaced by
the ones the ``.mlmodel`` holds (fp16, or int8 dequantized as Core ML does), each found by shape
and value (within its storage's rounding), and an integer buffer the file holds as a constant of
the same name (``embeddings.position_ids``) by its value, truncated to an integer as an index.
What still differs from the phone: Core ML's kernels (its fp16 compute on the GPU or Neural Engine;
here float32). ``weights="stage"`` keeps the stage's fp32 weights, to see what the file's precision
changes. Texts are tokenized with the bundle's own tokenizer files (what the app uses), cut to the
model's maximum length, and run in batches of equal length: no padding, as the app runs one text.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from alambic.errors import AlambicError
from alambic.ship.coreml_export import POOLED, wrapper
from alambic.ship.personalize_spec import Tensor, encoder_tensors

WEIGHTS = ("mlmodel", "stage")
BATCH = 64


@dataclass
class Encoder:
    module: Any  # the export wrapper, output POOLED
    tokenizer: Any
    max_length: int
    weights: str  # WEIGHTS
    loaded: str = ""  # what was read from the .mlmodel, in words
    matched: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, model: Any, tokenizer_dir: Path, max_length: int, *, spec: Any = None,
             weights: str = "mlmodel") -> Encoder:
        """``model`` (the stage's classifier) wrapped for its pooled vector; with ``weights="mlmodel"``,
        holding the weights of ``spec``'s frozen encoder."""
        from transformers import AutoTokenizer

        if weights not in WEIGHTS:
            raise AlambicError(f"--encoder-weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        module = wrapper(model, POOLED)
        encoder = cls(module, AutoTokenizer.from_pretrained(str(tokenizer_dir)), max_length, weights)
        if weights == "mlmodel":
            encoder.matched = load_encoder_weights(module, encoder_tensors(spec))
            encoder.loaded = describe_match(encoder.matched)
            if encoder.matched["missing"]:  # features of other weights than the phone's: refuse them
                raise AlambicError(f"the .mlmodel's encoder is not the stage's model: {encoder.loaded}. Pass "
                                   f"--stage DIR (the stage it was exported from), or --encoder-weights stage")
        else:
            encoder.loaded = "the compress stage's fp32 weights (--encoder-weights stage), not the .mlmodel's"
        return encoder

    def features(self, texts: list[str], *, quiet: bool = True, desc: str = "features") -> np.ndarray:
        """(N, H) pooled vectors of ``texts``, in order; rows of equal length run together, unpadded."""
        import torch

        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, row in enumerate(ids):
            by_length[len(row)].append(i)
        out = np.zeros((len(texts), self.width), np.float32)
        with torch.no_grad(), tqdm(total=len(texts), desc=desc, unit="text", disable=quiet, leave=False) as bar:
            for rows in by_length.values():
                for lo in range(0, len(rows), BATCH):
                    chunk = rows[lo:lo + BATCH]
                    batch = torch.tensor([ids[i] for i in chunk], dtype=torch.int32)
                    out[chunk] = self.module.pooled(batch, torch.ones_like(batch)).numpy()
                    bar.update(len(chunk))
        return out

    @property
    def width(self) -> int:
        return int(self.module.classifier.in_features)


def load_encoder_weights(module: Any, tensors: list[Tensor]) -> dict[str, Any]:
    """Replace ``module``'s encoder weights (every float tensor but the classifier's) with the
    ``.mlmodel``'s: per parameter, the tensor of equal size closest to it (as is, or transposed: an
    embedding is stored (size, vocabulary)), taken when within that tensor's rounding. Integer
    buffers come from a constant of the same name. Returns what was matched and what was not."""
    import torch

    state = module.state_dict()
    by_size: dict[int, list[Tensor]] = defaultdict(list)
    for tensor in tensors:
        by_size[tensor.values.size].append(tensor)
    by_name = {t.name.rsplit(".", 1)[0]: t for t in tensors}
    loaded, missing, worst = {}, [], 0.0
    for key, value in state.items():
        if key.startswith("classifier.") or not value.is_floating_point():
            continue  # the head: the updatable network's, read separately
        found = _closest(value.detach().float().numpy(), by_size[value.numel()])
        if found is None:
            missing.append(key)
            continue
        values, error = found
        loaded[key], worst = torch.from_numpy(values).reshape(value.shape), max(worst, error)
    module.load_state_dict(state | loaded)
    with torch.no_grad():  # integer buffers (position_ids is not in the state dict: not persistent)
        for key, buffer in module.named_buffers():
            if not buffer.is_floating_point() and key in by_name and by_name[key].values.size == buffer.numel():
                index = np.floor(by_name[key].values + 1e-3)  # an index: the dequantized value, truncated
                buffer.copy_(torch.from_numpy(index).reshape(buffer.shape).to(buffer.dtype))
                loaded[key] = buffer
    floats = sum(1 for k, v in state.items() if v.is_floating_point() and not k.startswith("classifier."))
    storage = {tensor.storage for tensor in tensors}
    return {"loaded": sorted(loaded), "missing": missing, "floats": floats, "worst_steps": worst,
            "storage": sorted(storage)}


def _closest(want: np.ndarray, candidates: list[Tensor]) -> tuple[np.ndarray, float] | None:
    """The candidate's values in ``want``'s layout and their error in rounding steps, for the
    candidate (as is, or transposed when 2-D) closest to ``want``, if within its rounding."""
    best: tuple[float, np.ndarray] | None = None
    layouts = [want.ravel()] + ([want.T.ravel()] if want.ndim == 2 else [])
    for tensor in candidates:
        for index, flat in enumerate(layouts):
            error = float(np.abs(tensor.values - flat).max()) / max(tensor.step, 1e-12)
            if error <= 1.0 and (best is None or error < best[0]):
                values = tensor.values if index == 0 else tensor.values.reshape(want.T.shape).T
                best = (error, np.ascontiguousarray(values.reshape(want.shape), np.float32))
    return None if best is None else (best[1], best[0])


def describe_match(matched: dict[str, Any]) -> str:
    """What the encoder holds, in words: how many tensors came from the .mlmodel, which did not."""
    floats = [k for k in matched["loaded"] if not k.endswith("position_ids") and not k.endswith("token_type_ids")]
    text = (f"{len(floats)} of {matched['floats']} float tensors read from the .mlmodel (stored "
            f"{'/'.join(matched['storage'])}, dequantized as Core ML does)")
    buffers = [k for k in matched["loaded"] if k not in floats]
    text += f"; integer constants from the file: {', '.join(buffers)}" if buffers else ""
    if matched["missing"]:
        more = f" and {len(matched['missing']) - 4} more" if len(matched["missing"]) > 4 else ""
        text += f"; no equal tensor in the file for: {', '.join(matched['missing'][:4])}{more}"
    return text


__all__ = ["WEIGHTS", "Encoder", "describe_match", "load_encoder_weights"]
