"""Models: the student base class, size overrides, the teacher's architecture, and one safe loader.

A *student* is a class registered through ``alambic_register_students``; it knows its full-size
architecture, how size overrides map onto it, and where its pretrained weights live::

    Student = registry["students"].get("roberta-l4")
    model = Student.build(num_labels=3, layers=2, hidden=64, heads=2, ffn=128)   # random init
    model = Student.from_pretrained(None, num_labels=3)          # its hub weights (needs network)
    model = Student.from_pretrained("ckpt/roberta-l4", num_labels=3)   # a save_pretrained folder
    check_vocab(model, tokenizer)                                # same vocabulary, or AlambicError

Size overrides are the keys of the config's ``Architecture`` section: ``layers``, ``hidden``,
``heads``, ``ffn`` (``None`` = keep the default). When ``hidden`` is changed and ``ffn`` is not,
the FFN keeps its default ratio to the width, so a narrower model stays proportioned.

All loading goes through :func:`load_pretrained`: a local directory loads directly (safetensors
when present; a legacy ``.bin`` only through ``torch.load(weights_only=True)``); a hub id that
cannot be reached raises an :class:`AlambicError` saying how to get the files; model code shipped
with a checkpoint runs only when ``trust_remote_code=True`` is passed.

torch and transformers are imported inside the functions, so ``import alambic`` stays light.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from huggingface_hub import snapshot_download

from alambic.errors import AlambicError, did_you_mean

if TYPE_CHECKING:
    from transformers import BertConfig, PretrainedConfig, PreTrainedModel

#: The vocabulary of bert-base-chinese; every built-in model uses it.
CHINESE_VOCAB_SIZE = 21128
SIZE_KEYS = ("layers", "hidden", "heads", "ffn")
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

Labels = Mapping[int, str] | Sequence[str] | None


# --- sizes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """An encoder's size, in the words of the config's ``Architecture`` section."""

    layers: int  # transformer blocks
    hidden: int  # width of the residual stream
    heads: int  # attention heads; must divide the width attention runs at
    ffn: int  # inner width of the feed-forward block

    def override(self, overrides: Mapping[str, int | None] | None, who: str) -> Size:
        """This size with ``overrides`` applied; unknown keys or non-positive values raise."""
        for key in overrides or {}:
            if key not in SIZE_KEYS:
                raise AlambicError(
                    f"{who}: unknown size override '{key}'{did_you_mean(key, SIZE_KEYS)}; "
                    f"allowed: {', '.join(SIZE_KEYS)}"
                )
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        for key, value in given.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AlambicError(
                    f"{who}: size override {key} must be a positive integer, got {value!r}"
                )
        if "hidden" in given and "ffn" not in given:  # keep the default FFN/width ratio
            given["ffn"] = max(1, round(self.ffn * given["hidden"] / self.hidden))
        return replace(self, **given)


def check_divisible(who: str, width: int, heads: int, what: str = "hidden") -> None:
    """Attention splits ``width`` into ``heads`` equal parts; say so when it cannot."""
    if width % heads:
        divisors = [h for h in range(1, min(width, 64) + 1) if width % h == 0]
        raise AlambicError(
            f"{who}: {what} size {width} is not divisible by heads={heads}; "
            f"choose heads among {divisors} or change hidden"
        )


def label_maps(num_labels: int, id2label: Labels = None) -> dict[str, Any]:
    """Config fields for a classifier head: ``id2label``, ``label2id``, ``problem_type``."""
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
        raise AlambicError(f"a classifier needs num_labels >= 2, got {num_labels!r}")
    if id2label is None:
        names = {i: f"LABEL_{i}" for i in range(num_labels)}
    elif isinstance(id2label, Mapping):
        names = {int(i): str(name) for i, name in id2label.items()}
    else:
        names = dict(enumerate(map(str, id2label)))
    if sorted(names) != list(range(num_labels)):
        raise AlambicError(
            f"id2label must name labels 0..{num_labels - 1} exactly once, got ids {sorted(names)}"
        )
    return {
        "id2label": names,
        "label2id": {name: i for i, name in names.items()},
        # explicit: float labels must not silently switch the loss to multi-label
        "problem_type": "single_label_classification",
    }


# --- BERT (teacher and BERT students) ---------------------------------------------------------

BERT_BASE_CHINESE = Size(layers=12, hidden=768, heads=12, ffn=3072)


def bert_config(
    size: Size, num_labels: int, id2label: Labels = None, who: str = "bert", **extra: Any
) -> BertConfig:
    """A ``BertConfig`` of ``size`` with the Chinese vocabulary, 512 positions, 2 segment types."""
    from transformers import BertConfig

    check_divisible(who, size.hidden, size.heads)
    fields: dict[str, Any] = {
        "vocab_size": CHINESE_VOCAB_SIZE,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "num_hidden_layers": size.layers,
        "hidden_size": size.hidden,
        "num_attention_heads": size.heads,
        "intermediate_size": size.ffn,
        **label_maps(num_labels, id2label),
    }
    return BertConfig(**(fields | extra))


def teacher_config(
    num_labels: int, id2label: Labels = None, overrides: Mapping[str, int | None] | None = None,
    vocab_size: int | None = None,
) -> BertConfig:
    """bert-base-chinese's architecture (12 x 768, 12 heads, FFN 3072), with size overrides."""
    size = BERT_BASE_CHINESE.override(overrides, "teacher.architecture")
    extra = {"vocab_size": vocab_size} if vocab_size is not None else {}
    return bert_config(size, num_labels, id2label, who="teacher.architecture", **extra)


# --- students ---------------------------------------------------------------------------------


class Student:
    """Base of student plugins: subclass, set ``id``, ``hub_id``, a docstring, and ``config``.

    Every method is a classmethod: the registry holds classes, and ``Cls.build(...)`` needs no
    instance. The docstring's first line is the description ``alambic plugins`` shows.
    """

    id: ClassVar[str] = ""
    #: where pretrained weights live on the Hugging Face hub; None = built from config only
    hub_id: ClassVar[str | None] = None
    #: the full-size architecture that overrides apply to
    size: ClassVar[Size]
    #: a student distilled first and transferred into this one (the MobileBERT adapter's roberta-l4)
    donor: ClassVar[str | None] = None
    #: where its weights come from when the config names none (``search.student_init``, ``--init``):
    #: "random" (from config) or "teacher-layers" (every k-th layer of the run's teacher)
    default_init: ClassVar[str] = "random"

    @classmethod
    def prepare_from_donor(cls, student: Any, donor: Any, train: Any, context: Any, settings: Any) -> None:
        """Initialise and pre-train ``student`` from the trained ``donor``, before distillation.

        Called in each training worker (``context``: rank, world size, device) when ``donor`` is
        set; ``settings`` are the distillation's (``DistillConfig``, with its ``transfer_*`` keys).
        """
        raise NotImplementedError(f"{cls.__qualname__} names a donor but defines no prepare_from_donor()")

    @classmethod
    def config(
        cls, num_labels: int, id2label: Labels = None, overrides: Mapping[str, int | None] | None = None
    ) -> PretrainedConfig:
        """The model config: full size, with ``overrides`` (layers/hidden/heads/ffn) applied."""
        raise NotImplementedError(f"{cls.__qualname__} must define config()")

    @classmethod
    def model_class(cls) -> type[PreTrainedModel]:
        """The transformers sequence-classification class this student is."""
        raise NotImplementedError(f"{cls.__qualname__} must define model_class()")

    @classmethod
    def build(
        cls, num_labels: int, id2label: Labels = None, vocab_size: int | None = None,
        attn_implementation: str | None = None, **overrides: int | None,
    ) -> PreTrainedModel:
        """A randomly initialised model from config alone (no download).

        ``vocab_size`` replaces the Chinese vocabulary's size, for a tokenizer trained on the data;
        ``attn_implementation="eager"`` when attention maps are needed (SDPA cannot return them).
        """
        config = cls.config(num_labels, id2label, overrides)
        if vocab_size is not None:
            config.vocab_size = vocab_size
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        return cls.model_class()(config)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike[str] | None, num_labels: int, id2label: Labels = None,
        **kw: Any,
    ) -> PreTrainedModel:
        """Load pretrained weights: a hub id or a local directory; None = this student's hub id.

        A checkpoint without a classifier (a plain encoder) gets a new head; one with a head of
        another label count gets a new head of ``num_labels``. ``kw`` goes to :func:`load_pretrained`.
        """
        source = name_or_path if name_or_path is not None else cls.hub_id
        if source is None:
            raise AlambicError(
                f"student '{cls.id}' has no published weights: build it from config "
                f"(build()) or load a directory saved with save_pretrained"
            )
        model_class = cls.model_class()
        return load_pretrained(source, model_class, num_labels=num_labels, id2label=id2label, **kw)

    @staticmethod
    def params(model: Any) -> int:
        """Number of parameters (shared tensors counted once)."""
        return params(model)


class BertStudent(Student):
    """A BERT encoder of ``size`` with the Chinese vocabulary and a classification head."""

    @classmethod
    def config(
        cls, num_labels: int, id2label: Labels = None, overrides: Mapping[str, int | None] | None = None
    ) -> BertConfig:
        size = cls.size.override(overrides, f"student '{cls.id}'")
        return bert_config(size, num_labels, id2label, who=f"student '{cls.id}'")

    @classmethod
    def model_class(cls) -> type[PreTrainedModel]:
        from transformers import BertForSequenceClassification

        return BertForSequenceClassification


def params(model: Any) -> int:
    """Number of parameters of a torch module (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters())


# --- loading ----------------------------------------------------------------------------------


def load_pretrained(
    name_or_path: str | os.PathLike[str],
    cls: type[PreTrainedModel] | Any,
    *,
    num_labels: int | None = None,
    id2label: Labels = None,
    trust_remote_code: bool = False,
    config_key: str = "the config key that names this model",
    **kw: Any,
) -> PreTrainedModel:
    """Load ``cls`` (a transformers model class, or an Auto class) from a directory or a hub id.

    :param num_labels: the classifier's label count; None keeps the checkpoint's. A new head is
        made (``ignore_mismatched_sizes``) only when the checkpoint's count differs.
    :param trust_remote_code: run model code shipped with a hub checkpoint (Auto classes only).
    :param config_key: named in the error when a hub id cannot be downloaded (e.g. teacher.model).
    :param kw: more keywords for ``from_pretrained`` (``cache_dir``, ``revision``, ...).
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    local = path.is_dir()
    if local:
        name = str(path)
        kw["use_safetensors"] = _has_safetensors(path)
    elif _looks_like_path(name):
        raise AlambicError(
            f"model directory not found: {path} (set {config_key} to a folder saved with "
            f"save_pretrained, or to a Hugging Face hub id)"
        )
    elif _offline():  # read now, not at import: huggingface_hub reads it only once
        kw.setdefault("local_files_only", True)
    kw["weights_only"] = True  # a legacy .bin is unpickled with torch.load(weights_only=True)

    auto = getattr(cls, "config_class", None) is None  # AutoModel* classes have none
    try:
        config = _load_config(name, cls, auto, trust_remote_code, kw)
        mismatched = False
        if num_labels is not None:
            mismatched = config.num_labels != num_labels
            for key, value in label_maps(num_labels, id2label).items():
                setattr(config, key, value)
        if auto:
            kw["trust_remote_code"] = trust_remote_code
        return cls.from_pretrained(name, config=config, ignore_mismatched_sizes=mismatched, **kw)
    except AlambicError:
        raise
    except (OSError, ValueError, pickle.UnpicklingError) as exc:  # transformers wraps most in OSError
        raise _load_error(name, local, config_key, exc) from exc


def _load_config(
    name: str, cls: Any, auto: bool, trust_remote_code: bool, kw: dict[str, Any]
) -> PretrainedConfig:
    hub_keys = {"cache_dir", "revision", "token", "local_files_only"}
    hub_kw = {k: v for k, v in kw.items() if k in hub_keys}
    if auto:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, **hub_kw)
    config_class = cls.config_class
    config_dict, _ = config_class.get_config_dict(name, **hub_kw)
    found = config_dict.get("model_type")
    if found and config_class.model_type and found != config_class.model_type:
        raise AlambicError(
            f"'{name}' is a {found} checkpoint, not {config_class.model_type}: "
            f"load it with a {found} student or model class"
        )
    return config_class.from_dict(config_dict)


def _has_safetensors(path: Path) -> bool:
    if not (path / "config.json").is_file():
        raise AlambicError(f"{path} is not a saved model: it has no config.json (use save_pretrained)")
    if any(path.glob("*.safetensors")):
        return True
    if (path / "pytorch_model.bin").is_file() or (path / "pytorch_model.bin.index.json").is_file():
        return False
    raise AlambicError(f"{path} has no weights: expected model.safetensors (save_pretrained writes it)")


def _looks_like_path(name: str) -> bool:
    """Hub ids are 'name' or 'org/name'; anything else that does not exist is a missing folder."""
    if name.startswith((".", "/", "~")) or "\\" in name or Path(name).is_absolute():
        return True
    return name.count("/") > 1


def _offline() -> bool:
    values = (os.environ.get(var, "").strip().lower() for var in _OFFLINE_ENV)
    return any(value in {"1", "true", "yes", "on"} for value in values)


def _load_error(name: str, local: bool, config_key: str, exc: BaseException) -> AlambicError:
    if local:
        return AlambicError(f"could not load the model in {name}: {exc}")
    if _is_network_error(exc):
        return AlambicError(
            f"could not download '{name}' from the Hugging Face hub (no network?): download it "
            f"where you have network with `huggingface-cli download {name} --local-dir <dir>` "
            f"(or load it there and call `save_pretrained(<dir>)`), copy <dir> here, then set "
            f"{config_key} to that local directory"
        )
    return AlambicError(f"could not load '{name}' from the Hugging Face hub: {exc}")


def _is_network_error(exc: BaseException | None) -> bool:
    """True when the hub could not be reached (offline mode, DNS, timeouts), not a missing repo."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        kind = type(exc).__name__
        if kind in {"LocalEntryNotFoundError", "OfflineModeIsEnabled"}:
            return True
        if "Connection" in kind or "Timeout" in kind:
            return True
        if "couldn't connect" in str(exc) or "offline mode" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# --- checks -----------------------------------------------------------------------------------


def check_vocab(model: Any, tokenizer: Any, model_source: str = "", tokenizer_source: str = "") -> None:
    """Raise when the model's embedding table and the tokenizer have different vocabulary sizes.

    A mismatch means token ids point at the wrong rows (or past the end): e.g. the English
    TinyBERT_General_4L_312D (30522) with the Chinese bert-base-chinese tokenizer (21128).
    ``model_source`` / ``tokenizer_source`` name where each came from, for the message.
    """
    model_size = model.get_input_embeddings().num_embeddings
    tok_size = len(tokenizer)
    if model_size == tok_size:
        return
    english = " (30522 is the English BERT vocabulary)" if model_size == 30522 else ""
    weights = f" (weights from {model_source})" if model_source else ""
    tokens = f" (tokenizer from {tokenizer_source})" if tokenizer_source else ""
    raise AlambicError(
        f"vocabulary mismatch: the model's embeddings have {model_size} tokens{english}{weights} but the "
        f"tokenizer has {tok_size}{tokens}; use a checkpoint trained on the tokenizer's vocabulary, for "
        f"Chinese (21128) e.g. huawei-noah/TinyBERT_4L_zh rather than "
        f"huawei-noah/TinyBERT_General_4L_312D, or uer/chinese_roberta_L-4_H-512"
    )


# --- where a model's weights and tokenizer come from ------------------------------------------

#: the files a saved tokenizer leaves in a model folder (any one of them)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def own_tokenizer(name_or_path: str | os.PathLike[str], config_key: str = "the model") -> Any | None:
    """The tokenizer saved with a model (its folder's, or its hub repo's); None when it has none."""
    from transformers import AutoTokenizer

    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / file).is_file() for file in TOKENIZER_FILES):
            return None
        try:
            return AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as exc:
            raise AlambicError(f"{config_key}: {path}: its saved tokenizer cannot be loaded: {exc}") from None
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=_offline())
    except (OSError, ValueError):  # no network or no tokenizer in the repo: the caller falls back
        return None


def weights_folder(name: str, config_key: str) -> Path:
    """A local folder holding ``name``'s weights: the folder itself, or a hub repo's snapshot
    (downloaded once to the Hugging Face cache), so the weights can be hashed by content."""
    path = Path(name).expanduser()
    if path.is_dir():
        _has_safetensors(path)  # a clear error when it holds no weights
        return path
    if _looks_like_path(name):
        raise AlambicError(f"{config_key}: model directory not found: {path} (give a folder saved with "
                           f"save_pretrained, a hub id, or a packaged <source>:<model>)")

    try:
        return Path(snapshot_download(name, local_files_only=_offline(),
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.bin"]))
    except Exception as exc:  # noqa: BLE001 -- huggingface_hub raises many kinds; the message says which
        raise _load_error(name, False, config_key, exc) from exc


def from_teacher_layers(teacher_path: str | os.PathLike[str], layers: int, attn_implementation: str | None = None,
                        ) -> PreTrainedModel:
    """The fine-tuned teacher with only every k-th encoder layer kept (DistilBERT/TinyBERT-style
    initialisation): its embeddings, the kept layers, its pooler and its classifier head. The
    layers kept are the top one of each block (12 -> 4: 2, 5, 8, 11), so the last layer, which
    the head was trained on, stays."""
    from transformers import AutoModelForSequenceClassification

    from alambic.train.losses import uniform_layer_map

    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForSequenceClassification.from_pretrained(teacher_path, use_safetensors=True, **kw)
    encoder = getattr(model.base_model, "encoder", None)
    if encoder is None or not hasattr(encoder, "layer"):
        raise AlambicError(f"student 'teacher-layers' needs a BERT-family teacher (encoder.layer), "
                           f"not {type(model).__name__}")
    total = len(encoder.layer)
    if not 1 <= layers <= total:
        raise AlambicError(f"student 'teacher-layers': layers={layers} but the teacher has {total} "
                           f"(set search.student_sizes.teacher-layers.layers between 1 and {total})")
    kept = uniform_layer_map(total, layers)
    encoder.layer = type(encoder.layer)(encoder.layer[i] for i in kept)
    model.config.num_hidden_layers = layers
    model.config.alambic_teacher_layers = kept  # recorded in config.json: which layers it started from
    return model
