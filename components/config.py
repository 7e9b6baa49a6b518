"""params.yaml -> frozen, typed configuration.

The file is parsed once at an entry point (CLI or flow) and plain values are passed down.
Every relative path in it is resolved against the project root, the folder of params.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


class SplitConfig(_Frozen):
    mode: Literal["patient", "image"] = "patient"
    train: float = Field(0.6, gt=0, lt=1)
    val: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    seed: int = 42
    out: str = "data/splits/split.csv"

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:.4f}")
        return self

    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


class Config(_Frozen):
    root: Path
    classes: tuple[str, ...] = ("MM", "OMBT")
    positive_class: str = "MM"
    synthetic: SyntheticConfig = SyntheticConfig()
    data: DataConfig = DataConfig()
    ingest: IngestConfig = IngestConfig()
    input: InputConfig = InputConfig()
    split: SplitConfig = SplitConfig()

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
        pydantic.ValidationError: a value is missing, mistyped or out of range.
    """
    path = Path(params).resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no params file; run from the project root or pass --params"
        )
    raw = yaml.safe_load(path.read_text()) or {}
    return Config(root=path.parent, **raw)
