"""The experiment schema: typed config sections, YAML loading, `--set` overrides.

Every section is a pydantic model whose fields carry their help text, so the schema is also the
config reference (`cifar-tune run --help` prints it). Anything a user can get wrong is rejected
here, before Ray starts or data is read, with a `ConfigError` that names the key path and the bad
value; the `search:` section is checked by cifar_tune.search against the fields it sets.
Every other module takes these typed objects; this one imports nothing else of cifar_tune's but
its names, the variant registry, the search check and the error base.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from cifar_tune.errors import ConfigError
from cifar_tune.names import EPOCH_METRICS, REFERENCE_VARIANT
from cifar_tune.search import check_search, sections_of
from cifar_tune.variants import VARIANTS

if TYPE_CHECKING:
    from cifar_tune.storage import Location

PRECISIONS = ("fp32", "tf32", "amp_fp16", "amp_bf16")
# The largest batch the AOTInductor package serves (its dynamic batch dimension's top). On CUDA, aten runs batch norm
# through cuDNN only for batches up to 65535 and torch.export guards on that, so a wider dynamic range
# fails there ("Constraints violated (batch)", seen on the first H200 run; tests/test_gpu_paths.py
# reproduces it with fake CUDA tensors). One bound on every device: one contract per package.
MAX_EXPORT_BATCH = 65535
Precision = Literal["fp32", "tf32", "amp_fp16", "amp_bf16"]


def default_data_root() -> str:
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return os.path.join(cache, "cifar-tune")


class Section(BaseModel):
    # Unknown keys are errors (a typo must not silently fall back to a default);
    # assignment is validated so `--set` and search values get the same checks.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    root: str = Field(
        default_factory=default_data_root,
        description="Folder holding cifar-10-batches-py/ (or the batch files themselves).",
    )
    download: bool = Field(
        True, description="Download CIFAR-10 with torchvision's downloader when it is absent."
    )
    val_size: int = Field(
        5000, gt=0, lt=50000, description="Training images held out for validation (same for every trial)."
    )
    split_seed: int = Field(
        0, description="Seed of the train/validation split; independent of the trial seed."
    )
    train_subset: int | None = Field(
        None, gt=0, description="Use only the first N training images after the split (quick runs)."
    )
    test_subset: int | None = Field(
        None, gt=0, description="Use only the first N test images (quick runs)."
    )

    @model_validator(mode="after")
    def _root_must_exist_without_download(self, info: ValidationInfo) -> DataConfig:
        # A saved config read back for analysis describes data that may have moved since.
        if (info.context or {}).get("saved"):
            return self
        if not self.download and not Path(self.root).expanduser().exists():
            raise ValueError(
                f"data.root {self.root!r} does not exist and data.download is false; "
                "point data.root at a folder holding cifar-10-batches-py/ or set data.download: true"
            )
        return self


class ModelConfig(Section):
    batch_norm: bool = Field(
        True, description="BatchNorm after every conv (false: the original, normalization-free AlexNet)."
    )
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout before each hidden FC layer.")
    width: float = Field(
        1.0, gt=0, le=4, description="Scales every conv's channels and the hidden FC size (1.0: AlexNet as "
        "in the study; smaller for scale tests: 0.125 has 73 k parameters, 1.0 has 4.6 M).")


class TrainConfig(Section):
    precision: Precision = Field(
        "fp32", description="fp32 | tf32 | amp_fp16 | amp_bf16 (usually searched, or search.precision: auto).")
    seed: int = Field(0, ge=0, description="Seeds Python, numpy, torch, data order, augmentation, dropout.")
    epochs: int = Field(30, gt=0, description="Training epochs.")
    batch_size: int = Field(256, gt=0, description="Training batch size.")
    eval_batch_size: int = Field(1000, gt=0, description="Batch size for validation and test passes.")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd (with momentum) or adamw.")
    lr: float = Field(0.05, gt=0, description="Peak learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (adamw: beta1).")
    nesterov: bool = Field(True, description="Nesterov momentum for sgd.")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay (decoupled for adamw).")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Cross-entropy label smoothing.")
    schedule: Literal["cosine", "onecycle", "constant"] = Field(
        "cosine", description="LR schedule, stepped every batch: cosine (after linear warm-up), onecycle, constant."
    )
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warm-up length for the cosine schedule.")
    channels_last: bool = Field(True, description="Run the model in channels_last memory format.")
    compile: bool = Field(
        False, description="Train through torch.compile (searchable; compile time reported apart as compile_time_s).")
    cuda_graph: bool | Literal["auto"] = Field(
        "auto", description="Capture the training step as one CUDA graph and replay it (auto: on CUDA unless "
        "train.compile; never on a CPU). Same numbers as eager but for the learning rate's fp32 rounding.")
    deterministic: bool = Field(False, description="Also force deterministic kernels (slower on GPU).")
    checkpoint_every: int = Field(
        1, gt=0, description="Epochs between checkpoints (also at the last epoch and where ASHA may stop a trial). "
        "1: a crash or interrupt loses at most the current epoch; k: up to k, for 1/k of the bytes. Resumed "
        "results are exact either way.")
    allow_slow_precision: bool = Field(
        False,
        description="Run a precision the device cannot run well (e.g. emulated bf16 or fp16 on a CPU) instead of refusing it.",
    )


class TuneConfig(Section):
    scheduler: Literal["fifo", "asha"] = Field(
        "fifo", description="fifo runs every trial to the end; asha stops weak ones early.")
    metric: str = Field("val_acc", description="Metric the scheduler and the best-trial pick optimize (any per-epoch metric).")
    mode: Literal["max", "min"] = Field("max", description="max | min: whether the metric is maximized or minimized.")
    num_samples: int = Field(1, gt=0, description="Times the search grid is repeated (distributions are sampled each time).")
    max_concurrent_trials: int | None = Field(
        None, gt=0, description="Cap on trials running at once (default: as resources allow).")
    grace_period: int = Field(1, gt=0, description="asha: epochs every trial runs before it can be stopped.")
    reduction_factor: float = Field(3.0, gt=1, description="asha: keep the top 1/reduction_factor at each rung.")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in EPOCH_METRICS:
            raise ValueError(f"unknown metric {value!r}; choose one of {', '.join(EPOCH_METRICS)}")
        return value



TuneConfigSection = TuneConfig  # its name before 0.4, for older pickles (see cifar_tune/compat.py)

class ResourcesConfig(Section):
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs per trial (fractions allowed).")
    gpus_per_trial: float = Field(
        0.0, ge=0, le=1, description="GPU share per trial, at most 1 (0.25: four trials share one GPU)."
    )


class RayConfig(Section):
    address: str | None = Field(
        None, description='null: embedded local Ray; "auto", "host:port" or "ray://host:port": join a cluster.'
    )
    max_failures: int = Field(0, ge=-1, description="Retries of a failed trial from its last checkpoint (-1: forever).")


class ExportConfig(Section):
    enabled: bool = Field(
        True, description="Export and check every finished trial's best checkpoint; time the variants once per run.")
    variants: list[str] | None = Field(
        None, description="Variants to build (null: every one the device runs; eager_fp32, the reference, always).")
    gpus: float | None = Field(
        None, ge=0, le=1,
        description="GPUs for each export task (null: the trials' GPU share, or 1 if they use none; 0 without GPUs).")
    cpus: float = Field(1.0, gt=0, description="CPUs reserved for each export task.")
    threads: int | None = Field(None, gt=0, description="CPU threads for inference (null: the task's CPUs).")
    batch_sizes: list[int] = Field([1, 64, 512], min_length=1, description="Batch sizes to time.")
    warmup_runs: int = Field(3, ge=0, description="Untimed runs before timing each variant and batch size.")
    min_runs: int = Field(10, gt=0, description="Timed runs at least...")
    min_duration_s: float = Field(1.0, ge=0, description="...and at least this long, per variant and batch size.")
    rounds: int = Field(
        3, gt=0, description="Rounds; each times every variant and batch size in turn (the runs above split among them).")
    fp32_min_agreement: float = Field(
        0.999, gt=0, le=1, description="fp32 variants: least share of test images predicted as eager fp32 does.")
    max_accuracy_drop_pp: float = Field(
        1.0, ge=0, description="bf16/fp16/int8 variants: largest test-accuracy drop vs eager fp32, in points.")
    calibration_images: int = Field(512, gt=0, description="Training images used to calibrate INT8.")
    end_to_end: bool = Field(
        True, description="Also time one DataLoader pass over the test files (the original study's measure).")
    tensorrt: bool = Field(
        False, description="Also run onnx_fp32/onnx_fp16 through TensorRT where installed (the tensorrt variant does anyway).")
    timeout_s: float = Field(
        1800, gt=0, description="How long the experiment's end waits for the next unfinished export, and for the timing.")

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        unknown = [v for v in value if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {', '.join(map(repr, unknown))}; known: {', '.join(VARIANTS)}")
        return [v for v in VARIANTS if v in value or v == REFERENCE_VARIANT]  # the reference, and a fixed order

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(b <= 0 for b in value):
            raise ValueError(f"batch sizes must be positive, got {value}")
        if too_large := [b for b in value if b > MAX_EXPORT_BATCH]:
            raise ValueError(f"{too_large} over {MAX_EXPORT_BATCH}, the largest batch an exported graph serves")
        return sorted(set(value))


class WandbConfig(Section):
    mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="auto: online with credentials, else offline (sync later); online | offline | disabled.")
    project: str = Field("cifar-tune", description="W&B project; runs are grouped by experiment name.")
    entity: str | None = Field(None, description="W&B entity (team or user); null: your default.")
    tags: list[str] = Field(default_factory=list, description="Extra tags on every run (precision and seed are added).")
    group: str | None = Field(None, description="W&B run group (null: the experiment's name; `extend` keeps its "
                                                "experiment's, so the dashboard shows the new seeds with the old).")

    def group_for(self, experiment_name: str) -> str:
        return self.group or experiment_name


class AnalysisConfig(Section):
    margin_pp: float = Field(0.5, gt=0, description="Equivalence margin in test-accuracy points: a precision is "
                                                     "'equivalent' to fp32 when the 95% CI lies within +-margin.")


class TimingConfig(Section):
    enabled: bool = Field(
        False, description="After the trials, time each precision with a device to itself (alone: cifar-tune time).")
    rounds: int = Field(6, ge=2, description="Rounds; each times every precision once, the order rotated per round.")
    steps: int = Field(20, gt=0, description="Training steps timed per precision per round, at train.batch_size.")
    warmup_steps: int = Field(3, ge=0, description="Untimed steps before each timed block (kernel choice, caches).")
    cpus: float | None = Field(
        None, gt=0, description="CPUs per timing task (null: every CPU of the node without GPUs, else cpus_per_trial).")
    gpus: float | None = Field(
        None, ge=0, le=1, description="GPUs per timing task (null: a whole GPU if the trials use one, else 0).")


class DebugConfig(Section):
    """No longer part of the schema (fault injection moved to cifar_tune/faults.py): kept so that
    experiments whose Tune state pickled a config with it still resume."""

    fail_at_epoch: int | None = Field(
        None, gt=0, description="Testing aid: a trial raises once, right after checkpointing this epoch."
    )
    fail_export_seed: int | None = Field(
        None, description="Testing aid: the export task of every trial with this seed raises.")
    crash_export_seed: int | None = Field(
        None, description="Testing aid: the export task of every trial with this seed kills its own worker process.")


class ExperimentConfig(Section):
    name: str = Field("cifar-tune", description="Experiment name; results go to <storage_path>/<name>/ (letters, digits, . _ -).")
    storage_path: str = Field("./results", description="A folder, or cloud storage (s3://bucket/prefix, gs://...) for a cluster.")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    search: dict[str, Any] = Field(
        default_factory=dict,
        description="A train/model key mapped to a list (grid) or {uniform|loguniform|randint|choice: [...]}; precision: auto.",
    )
    tune: TuneConfig = Field(default_factory=TuneConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    timing: TimingConfig = Field(default_factory=TimingConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)

    @model_validator(mode="before")
    @classmethod
    def _drop_old_debug_section(cls, raw: Any) -> Any:
        """Configs saved before 0.4 carry `debug:` (fault injection, all null outside the tests): ignored."""
        if isinstance(raw, dict) and "debug" in raw:
            if any(v is not None for v in (raw.get("debug") or {}).values()):
                raise ValueError("debug: fault injection is no longer a config section (the tests set "
                                 "CIFAR_TUNE_FAULTS; see cifar_tune/faults.py); remove it")
            raw = {k: v for k, v in raw.items() if k != "debug"}
        return raw

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(f"{value!r} must be letters, digits, '.', '_' or '-' (it becomes a folder name)")
        return value

    @model_validator(mode="after")
    def _check_search(self) -> ExperimentConfig:
        # Runs after train and model are valid, so each search value is checked against them.
        # Updated in place: assigning would re-run this validator (validate_assignment).
        self.search.update(check_search(self.search, sections_of(self)))
        return self

    @property
    def experiment_dir(self) -> Path:
        """`<storage_path>/<name>` as an absolute local path (local storage only)."""
        return Path(self.storage_path).expanduser().resolve() / self.name

    def storage_is_local(self) -> bool:
        return "://" not in self.storage_path

    def experiment_uri(self) -> str:
        """`<storage_path>/<name>` as text, without touching the storage (for messages)."""
        if self.storage_is_local():
            return str(self.experiment_dir)
        base, sep, query = self.storage_path.partition("?")
        return f"{base.rstrip('/')}/{self.name}{sep}{query}"

    def experiment_location(self) -> Location:
        """`<storage_path>/<name>`, on local disk or in cloud storage."""
        from cifar_tune.storage import Location  # pyarrow: not needed by what only trains or exports

        return Location.of(self.storage_path) / self.name


# --------------------------------------------------------------------------- errors


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _suggest(loc: tuple[Any, ...]) -> str:
    """'did you mean' for an unknown key, from the fields of the section it sits in."""
    section: type[BaseModel] = ExperimentConfig
    for part in loc[:-1]:
        field = section.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        section = annotation
    close = difflib.get_close_matches(str(loc[-1]), list(section.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def format_validation_error(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> str:
    lines = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        where = _key_path(loc) or "config"
        if err["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key (got {err['input']!r}){_suggest(loc)}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {msg} (got {err['input']!r})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=0.1' -> ('train.lr', 0.1); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({exc})") from None
    return key.strip(), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a raw config dict, creating sections as needed."""
    for text in overrides:
        key, value = parse_override(text)
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section (it holds {child!r})")
            node = child
        node[parts[-1]] = value
    return raw


def validate_config(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a raw dict (YAML already parsed) into an ExperimentConfig."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def validate_section(section: type[BaseModel], raw: dict[str, Any], name: str) -> Any:
    """Validate one section on its own (e.g. `cifar-tune bench --set`), errors named `name.key`."""
    try:
        return section.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, (name,))) from None


def _read_config_text(path: str | os.PathLike[str] | Location) -> str:
    try:
        return Path(path).read_text() if isinstance(path, (str, os.PathLike)) else path.read_text()
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError(f"config file {str(path)!r} does not exist") from None


def load_config(path: str | os.PathLike[str] | Location, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment file (local, or a Location in cloud storage), apply `--set`
    overrides, validate."""
    text = _read_config_text(path)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return validate_config(apply_overrides(raw, overrides or []))


def load_saved_config(path: str | os.PathLike[str] | Location) -> ExperimentConfig:
    """An experiment's saved config (cifar_tune_config.yaml) read back, for analysis or export.
    It was valid when saved; only data.root is not checked, as the data may have moved since."""
    try:
        return ExperimentConfig.model_validate(yaml.safe_load(_read_config_text(path)) or {},
                                               context={"saved": True})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc)}") from None


def dump_config_text(config: ExperimentConfig) -> str:
    """The config as the YAML that `cifar_tune_config.yaml` holds (and `load_config` reads)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _yaml_value(value: Any) -> str:
    if isinstance(value, str) and value.startswith(os.path.expanduser("~") + os.sep):
        value = "~" + value[len(os.path.expanduser("~")):]  # the default data root, as any user reads it
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()


def describe_schema() -> str:
    """The config reference as YAML: every key, its default and its help text. docs/configuration.md's
    config block is this text (tests/test_docs.py), and `cifar-tune run --help` prints it."""
    lines = []
    for name, field in ExperimentConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.append(f"{name}:")
            fields = [(f"  {sub}", sub_field) for sub, sub_field in annotation.model_fields.items()]
        else:
            fields = [(name, field)]
        for key, item in fields:
            default = "{}" if name == "search" else _yaml_value(item.get_default(call_default_factory=True))
            lines.append(f"{f'{key}: {default}':<25} # {item.description}")
    return "\n".join(lines)
