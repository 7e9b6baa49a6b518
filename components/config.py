"""params.yaml -> frozen, typed configuration.

The file is parsed once at an entry point (CLI or flow) and plain values are passed down.
Every relative path in it is resolved against the project root, the folder of params.yaml.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from components.metric_names import parse_metric_name


class _Frozen(BaseModel):
    # No section takes an infinite or NaN number (`.inf`, `.nan` in YAML).
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Window(_Frozen):
    """A CT display window in Hounsfield units."""

    center: float
    width: float = Field(gt=0)

    @property
    def low(self) -> float:
        return self.center - self.width / 2

    @property
    def high(self) -> float:
        return self.center + self.width / 2


class SyntheticConfig(_Frozen):
    out: str = "data/raw/synthetic"
    patients_per_class: int = Field(20, ge=1)
    slices_min: int = Field(8, ge=1)
    slices_max: int = Field(16, ge=1)
    size: int = Field(256, ge=64)
    difficulty: float = Field(0.5, ge=0.0, le=1.0)
    seed: int = 7

    @model_validator(mode="after")
    def _slices_ordered(self) -> SyntheticConfig:
        if self.slices_min > self.slices_max:
            raise ValueError("synthetic.slices_min must not exceed synthetic.slices_max")
        return self


class DataConfig(_Frozen):
    dicom_root: str = "data/raw/synthetic"
    labels_csv: str | None = None


class IngestConfig(_Frozen):
    out: str = "data/processed"
    key_env: str = "MYELOMET_DEID_KEY"
    key_file: str = ".myelomet/deid.key"
    max_frame_pixels: int = Field(4096 * 4096, ge=1)
    max_image_bytes: int = Field(1024**3, ge=1)


class PullConfig(_Frozen):
    max_connections: int = Field(4, ge=1, le=64)
    retries: int = Field(3, ge=0)
    backoff_s: float = Field(0.5, ge=0)
    timeout_s: float = Field(60.0, gt=0)
    calling_aet: str = Field("MYELOMET", min_length=1, max_length=16)


class InputConfig(_Frozen):
    mode: Literal["windows", "grey"] = "windows"
    windows: dict[str, Window] = Field(
        default_factory=lambda: {
            "bone": Window(center=400, width=1800),
            "soft_tissue": Window(center=50, width=400),
            "wide": Window(center=200, width=4000),
        }
    )
    grey_window: str = "bone"
    crop: float = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _windows_fit_mode(self) -> InputConfig:
        if self.mode == "windows" and len(self.windows) != 3:
            raise ValueError(f"input.windows needs exactly 3 windows, got {list(self.windows)}")
        if self.mode == "grey" and self.grey_window not in self.windows:
            raise ValueError(f"input.grey_window {self.grey_window!r} is not in input.windows")
        return self

    def channel_windows(self) -> list[Window]:
        """The window of each of the three model input channels, in order."""
        if self.mode == "grey":
            return [self.windows[self.grey_window]] * 3
        return list(self.windows.values())


MIN_FOLDS = 3  # cross-validation: each fold needs a test, a validation and a training part


class SplitConfig(_Frozen):
    mode: Literal["patient", "image"] = "patient"
    train: float = Field(0.6, gt=0, lt=1)
    val: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    seed: int = 42
    stratify: tuple[str, ...] = ()  # manifest columns stratified by besides the label
    folds: int = 0  # k >= 3: patient-grouped k-fold cross-validation; 0 = the single split
    out: str = "data/splits/split.csv"

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:.4f}")
        return self

    @model_validator(mode="after")
    def _folds_valid(self) -> SplitConfig:
        if self.folds != 0 and self.folds < MIN_FOLDS:
            raise ValueError(
                f"split.folds must be 0 (one train/val/test split) or at least {MIN_FOLDS} (k-fold "
                f"cross-validation: each fold needs a test, a val and a train part), got "
                f"{self.folds}"
            )
        if self.folds and self.mode != "patient":
            raise ValueError(
                f"split.folds {self.folds} needs split.mode patient (cross-validation folds "
                "group slices by patient); set split.mode: patient or split.folds: 0"
            )
        return self

    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def view_fractions(self) -> dict[str, float]:
        """The share of patients in train, val and test of one split: `fractions()` for the
        single split; with k folds, one fold tests, the next validates, k - 2 train."""
        if not self.folds:
            return self.fractions()
        k = self.folds
        return {"train": (k - 2) / k, "val": 1 / k, "test": 1 / k}


class ValidationConfig(_Frozen):
    """Thresholds of the Great Expectations suites (myelomet validate)."""

    min_patients_per_class: int = Field(3, ge=1)
    min_class_fraction: float = Field(0.2, gt=0, lt=0.5)
    min_side: int = Field(64, ge=1)
    max_side: int = Field(2048, ge=1)
    pixel_spacing_mm: tuple[float, float] = (0.1, 5.0)
    slice_thickness_mm: tuple[float, float] = (0.3, 10.0)
    bone_hu: float = 300.0
    bone_fraction: tuple[float, float] = (0.005, 0.8)
    split_tolerance: float = Field(0.1, gt=0, lt=1)
    docs_out: str = "reports/validation"
    summary_out: str = "reports/validation.json"


BACKBONES = (
    "DenseNet121",
    "DenseNet169",
    "EfficientNetB0",
    "MobileNet",
    "MobileNetV2",
    "VGG16",
    "Xception",
)


# Slowest to fastest to train at native size: img/s on one H200, Keras 3 on JAX, mixed
# bfloat16, batch 16 (DenseNet169 190, DenseNet121 273, EfficientNetB0 456, Xception 579,
# MobileNetV2 602, MobileNet 1027, VGG16 1600).
TRAINING_COST_ORDER = (
    "DenseNet169", "DenseNet121", "EfficientNetB0", "Xception", "MobileNetV2", "MobileNet",
    "VGG16",
)  # fmt: skip


def slowest_first(names: Iterable[str]) -> list[str]:
    """`names` ordered slowest first, so that backbones sharing devices finish together."""
    return sorted(names, key=TRAINING_COST_ORDER.index)


# sbatch options that training.slurm sets from its own fields, or that submitit sets itself.
_SLURM_MANAGED = frozenset({
    "partition", "account", "gpus-per-task", "gpus", "gpus-per-node", "gres", "cpus-per-task",
    "mem", "time", "array", "output", "error", "signal", "job-name", "open-mode", "nodes",
    "ntasks-per-node", "wckey",
})  # fmt: skip


class SlurmConfig(_Frozen):
    """How training.executor slurm asks for each training task (one backbone, per fold): one
    task of a job array, requeued at its time limit or on preemption, resumed from its last
    epoch."""

    partition: str | None = Field(None, min_length=1)  # null: the cluster's default
    account: str | None = Field(None, min_length=1)  # null: the user's default account
    gpus_per_task: int = Field(1, ge=0)
    cpus_per_task: int = Field(8, ge=1)
    mem_gb: float = Field(32, gt=0)
    time_min: int = Field(240, ge=1)  # a task's time limit; it is requeued and resumes there
    max_timeouts: int = Field(3, ge=0)  # how often a task reaching time_min is requeued
    folder: str = ".slurm"  # batch scripts and logs, on the filesystem the nodes share
    poll_s: float = Field(10.0, gt=0)  # how often the flow asks Slurm about its tasks
    options: dict[str, str | int] = Field(default_factory=dict)  # more sbatch options: {qos: high}

    @field_validator("options")
    @classmethod
    def _options_unmanaged(cls, value: dict[str, str | int]) -> dict[str, str | int]:
        for key in value:
            flag = key.replace("_", "-")
            if flag.startswith("-") or not flag.replace("-", "").isalnum():
                raise ValueError(
                    f"{key!r} is not an sbatch option's long name without dashes (qos, say)"
                )
            if flag in _SLURM_MANAGED:
                raise ValueError(
                    f"{key!r} is set by myelomet: use training.slurm's partition, account, "
                    "gpus_per_task, cpus_per_task, mem_gb or time_min"
                )
        return value


# The training params one backbone may set differently from the others.
PER_BACKBONE = frozenset({
    "image_size", "batch_size", "epochs", "learning_rate", "dropout", "patience", "monitor",
    "finetune_epochs", "finetune_fraction", "finetune_learning_rate", "scratch_learning_rate",
})  # fmt: skip


class TrainingConfig(_Frozen):
    """Fine-tuning of the backbones (myelomet train)."""

    backbones: tuple[str, ...] = BACKBONES
    image_size: int | None = Field(None, ge=32)
    batch_size: int = Field(16, ge=1)
    epochs: int = Field(100, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    dropout: float = Field(0.3, ge=0, lt=1)
    head_units: tuple[int, ...] = (512, 256)
    patience: int = Field(10, ge=1)
    monitor: Literal["val_loss", "val_auc"] = "val_loss"  # selects the best epoch
    seed: int = 42
    finetune_epochs: int = Field(0, ge=0)
    finetune_fraction: float = Field(0.2, gt=0, le=1)
    finetune_learning_rate: float = Field(1e-5, gt=0)
    scratch_learning_rate: float = Field(1e-3, gt=0)
    augment_rotation_deg: float = Field(10.0, ge=0)
    augment_intensity: float = Field(0.1, ge=0)
    weights: Literal["imagenet", "none"] = "imagenet"
    require_pretrained: bool = False
    weights_dir: str | None = None
    weights_dir_env: str = "MYELOMET_WEIGHTS_DIR"
    mixed_precision: Literal["auto", "off", "float16", "bfloat16"] = "auto"
    xla: Literal["auto", "on", "off"] = "auto"
    # threads of one training process on a CPU; null = the cores it is lent (fastest, but
    # results then depend on the machine's core count)
    cpu_threads: int | None = Field(None, ge=1)
    executor: Literal["local", "ray", "slurm"] = "local"
    ray_address: str | None = None
    slurm: SlurmConfig = SlurmConfig()
    max_parallel: int | None = Field(None, ge=1)
    retries: int = Field(1, ge=0)
    models_out: str = "models"
    cache_dir: str = "data/features"
    # compiled programs (JAX, TensorFlow XLA) that later processes reuse; null = none
    compile_cache: str | None = ".cache/compile"
    # training processes sharing one GPU: "auto" = from the card's memory, or a number
    processes_per_gpu: Literal["auto"] | int = "auto"
    # per backbone, values that differ from the ones above (e.g. VGG16: {epochs: 10})
    overrides: dict[str, dict[str, int | float | str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_backbones(self) -> TrainingConfig:
        if self.processes_per_gpu != "auto" and self.processes_per_gpu < 1:
            raise ValueError("training.processes_per_gpu must be auto or at least 1")
        unknown = sorted(set(self.backbones) - set(BACKBONES))
        if unknown:
            raise ValueError(f"training.backbones has unknown names {unknown}; known: {BACKBONES}")
        for name, values in self.overrides.items():
            if name not in BACKBONES:
                raise ValueError(f"training.overrides.{name}: unknown backbone; known: {BACKBONES}")
            wrong = sorted(set(values) - PER_BACKBONE)
            if wrong:
                raise ValueError(
                    f"training.overrides.{name}: {wrong} cannot differ per backbone; "
                    f"these can: {sorted(PER_BACKBONE)}"
                )
            try:
                self.for_backbone(name)  # each merged section must validate on its own
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
                )
                raise ValueError(f"training.overrides.{name}: {problems}") from None
        return self

    def for_backbone(self, name: str) -> TrainingConfig:
        """This section with `name`'s overrides applied (and no overrides left in it)."""
        merged = {**self.model_dump(), **self.overrides.get(name, {}), "overrides": {}}
        return type(self).model_validate(merged)


class LeakageConfig(_Frozen):
    """The paper's image-level split, trained on one backbone, to show what leakage does."""

    enabled: bool = True
    backbone: str = "VGG16"
    split_out: str = "data/splits/split_image.csv"
    models_out: str = "models_image_split"

    @model_validator(mode="after")
    def _known_backbone(self) -> LeakageConfig:
        if self.backbone not in BACKBONES:
            raise ValueError(f"leakage.backbone {self.backbone!r} unknown; known: {BACKBONES}")
        return self


class TrackingConfig(_Frozen):
    """Where MLflow writes; MLFLOW_TRACKING_URI, when set, wins over uri."""

    uri: str = "sqlite:///mlruns/mlflow.db"
    artifacts: str = "mlruns/artifacts"
    experiment: str = "myelomet"


class EvaluationConfig(_Frozen):
    """Metrics, confidence intervals, selection and promotion (myelomet evaluate)."""

    n_bootstrap: int = Field(1000, ge=10)
    seed: int = 0
    confidence: float = Field(0.95, gt=0, lt=1)
    select_metric: str = "patient_auc"
    ensemble_top_k: int = Field(3, ge=0)
    calibration_bins: int = Field(10, ge=2)
    gradcam_per_class: int = Field(3, ge=0)
    registered_model: str = "myelomet"
    min_improvement: float = Field(0.0, ge=0)
    # every registered version also as ONNX, checked against Keras (registry.onnx_export)
    onnx: bool = True
    reports_out: str = "reports"

    @field_validator("select_metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        parse_metric_name(value)
        return value


class Config(_Frozen):
    root: Path
    classes: tuple[str, ...] = ("MM", "OMBT")
    positive_class: str = "MM"
    synthetic: SyntheticConfig = SyntheticConfig()
    data: DataConfig = DataConfig()
    ingest: IngestConfig = IngestConfig()
    pull: PullConfig = PullConfig()
    input: InputConfig = InputConfig()
    split: SplitConfig = SplitConfig()
    validation: ValidationConfig = ValidationConfig()
    training: TrainingConfig = TrainingConfig()
    leakage: LeakageConfig = LeakageConfig()
    tracking: TrackingConfig = TrackingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @model_validator(mode="after")
    def _classes_valid(self) -> Config:
        if len(self.classes) != 2 or len(set(self.classes)) != 2:
            raise ValueError(f"classes must name two distinct classes, got {list(self.classes)}")
        if self.positive_class not in self.classes:
            raise ValueError(f"positive_class {self.positive_class!r} is not one of {self.classes}")
        return self

    def path(self, relative: str | Path) -> Path:
        """Resolve a path from params.yaml against the project root."""
        p = Path(relative)
        return p if p.is_absolute() else self.root / p


def load_config(params: str | Path = "params.yaml") -> Config:
    """Parse params.yaml into a frozen Config.

    Args:
        params: path to params.yaml; its folder is the project root.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not YAML (the message names line and column), not a
            mapping, or a value is missing, mistyped, out of range or not finite (one line
            naming each key).
    """
    path = Path(params).resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no params file; run from the project root or pass --params"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ValueError(f"{where}: not valid YAML ({problem}); fix the file there") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for where, value in _numbers(raw):
        if not math.isfinite(value):
            raise ValueError(f"{path}: {where} is {value}; give a finite number")
    try:
        return Config(root=path.parent, **raw)
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        raise ValueError(f"{path}: {problems}; fix the file there") from None


def _numbers(raw: object, where: str = "") -> Iterator[tuple[str, float]]:
    """Every float in the parsed YAML, with its dotted key."""
    if isinstance(raw, float):
        yield where, raw
    elif isinstance(raw, dict):
        for key, value in raw.items():
            yield from _numbers(value, f"{where}.{key}" if where else str(key))
    elif isinstance(raw, list):
        for i, value in enumerate(raw):
            yield from _numbers(value, f"{where}[{i}]")


def _problem(error: Mapping[str, Any]) -> str:
    """One validation error on one line: the key, then pydantic's message."""
    where = ".".join(map(str, error["loc"]))
    message = " ".join(error["msg"].removeprefix("Value error, ").split())
    return f"{where}: {message}" if where else message
