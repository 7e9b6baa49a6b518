"""Slice predictions from DICOM files with the trained models; nothing here knows MLflow.

A `Predictor` holds the model of each member of a candidate (one backbone, or the members of
the ensemble, whose positive-class probabilities it averages, as evaluation does), each with
its input size and CT windows, and the decision threshold chosen on validation. It reads
files with `dicom.read_ct` and feeds `dataset.model_input`, the preprocessing of training, so
a slice is seen at serving exactly as it was in training. The models run on Keras or on
onnxruntime (`engines`): only the inference call differs.

A `ServingSpec` is what a Predictor needs besides the model files; `registry` stores it as
JSON next to them in the registered model.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from components.artifacts import probability_column
from components.config import Window
from components.data.dataset import model_input
from components.data.dicom import MAX_FRAME_PIXELS, CtImage, read_ct
from components.data.dicom_warnings import quiet_dicom_library
from components.data.raw_tree import list_files
from components.data.rejects import DicomRejected, RejectReason
from components.registry.engines import OnnxModel, engine_of, infer, load_models

if TYPE_CHECKING:
    import keras

# A CT slice is well under 1 MiB and a large enhanced multi-frame file a few hundred; anything
# above this is not worth decoding in a request.
MAX_ITEM_BYTES = 64 * 1024 * 1024
PREDICT_BATCH = 32
SPEC_FORMAT = 1

# A DicomRejected stands for an item the caller already found unusable: it gets its error row.
Source = str | os.PathLike[str] | bytes | bytearray | memoryview | DicomRejected


class MemberSpec(BaseModel):
    """One model of a candidate: its backbone, input side, channel windows and centre crop."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    backbone: str
    image_size: int
    windows: tuple[Window, ...]
    crop: float = 1.0

    @field_validator("windows")
    @classmethod
    def _three_channels(cls, windows: tuple[Window, ...]) -> tuple[Window, ...]:
        if len(windows) != 3:
            raise ValueError(f"expected 3 channel windows, got {len(windows)}")
        return windows


class ServingSpec(BaseModel):
    """Everything a Predictor needs besides the model files; stored as its JSON
    (`model_dump_json`, read back by `from_json`) in the registered model.

    Attributes:
        format: SPEC_FORMAT; a spec of another format is refused.
        candidate: the evaluated candidate, a backbone name or `ensemble`.
        members: the models whose positive-class probabilities are averaged.
        classes: class names in the order of the softmax outputs (params `classes`).
        positive_class: the class whose probability is reported (p_<class>).
        thresholds: level (`slice`, `patient`) -> threshold chosen on validation; a slice is
            labelled positive when its probability is >= thresholds["slice"].
        keras_backend: the Keras backend(s) the members were trained on (they load and
            predict on any backend); empty when not recorded.
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    format: int = SPEC_FORMAT
    candidate: str
    members: tuple[MemberSpec, ...]
    classes: tuple[str, ...]
    positive_class: str
    thresholds: dict[str, float]
    keras_backend: str = ""

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if value != SPEC_FORMAT:
            raise ValueError(
                f"serving spec format {value!r}; this code reads format {SPEC_FORMAT}: log "
                "the model again with this version of myelomet"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ServingSpec:
        if not self.members:
            raise ValueError(f"candidate {self.candidate!r} has no member models")
        if len(self.classes) != 2 or self.positive_class not in self.classes:
            raise ValueError(
                f"classes must be two names including {self.positive_class!r}, "
                f"got {list(self.classes)}"
            )
        if "slice" not in self.thresholds:
            raise ValueError(
                f"thresholds {dict(self.thresholds)} lack the 'slice' threshold; pass the "
                "candidate's thresholds from evaluation"
            )
        return self

    @property
    def threshold(self) -> float:
        """The slice-level decision threshold."""
        return float(self.thresholds["slice"])

    @property
    def probability_key(self) -> str:
        """The name of the probability in outputs, e.g. p_mm."""
        return probability_column(self.positive_class)

    @property
    def negative_class(self) -> str:
        return next(c for c in self.classes if c != self.positive_class)

    @classmethod
    def from_json(cls, text: str | bytes) -> ServingSpec:
        """Read a spec written by `model_dump_json`.

        Raises:
            ValueError: the text is not a serving spec of a format this code reads.
        """
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"not a serving spec ({problems})") from None


class Predictor:
    """Positive-class probabilities and labels for CT slices, from one or more models."""

    def __init__(
        self,
        spec: ServingSpec,
        models: Sequence[keras.Model | OnnxModel],
        max_item_bytes: int = MAX_ITEM_BYTES,
        max_frame_pixels: int = MAX_FRAME_PIXELS,
    ) -> None:
        """
        Args:
            spec: members, classes, positive class and thresholds.
            models: one loaded model per member of spec, in the same order: all Keras
                models or all `OnnxModel`s.
            max_item_bytes: files or byte strings above this size get an error row.
            max_frame_pixels: files whose frames have more Rows x Columns get an error row
                (`frame_too_large`), their pixels unread; as ingest.max_frame_pixels.

        Raises:
            ValueError: the models do not match the spec (count, input size, outputs) or
                mix engines.
        """
        if len(models) != len(spec.members):
            raise ValueError(f"{len(models)} models for {len(spec.members)} members of the spec")
        engines = {engine_of(m) for m in models}
        if len(engines) > 1:
            raise ValueError(f"the models mix engines {sorted(engines)}; load all on one")
        for member, model in zip(spec.members, models, strict=True):
            size = member.image_size
            if tuple(model.input_shape[1:]) != (size, size, 3):
                raise ValueError(
                    f"{member.backbone}: the model takes {model.input_shape[1:]}, the spec says "
                    f"({size}, {size}, 3); log the candidate again from its models folder"
                )
            if model.output_shape[-1] != len(spec.classes):
                raise ValueError(
                    f"{member.backbone}: {model.output_shape[-1]} outputs for classes "
                    f"{list(spec.classes)}"
                )
        self.spec = spec
        self.models = tuple(models)
        self.engine = engines.pop()
        self.max_item_bytes = max_item_bytes
        self.max_frame_pixels = max_frame_pixels
        self._positive = spec.classes.index(spec.positive_class)

    @classmethod
    def load(
        cls,
        spec: ServingSpec,
        model_files: Sequence[Path],
        max_item_bytes: int = MAX_ITEM_BYTES,
        max_frame_pixels: int = MAX_FRAME_PIXELS,
        engine: str = "keras",
    ) -> Predictor:
        """Load each member's model on `engine` and run its inference once.

        Args:
            spec: the serving spec.
            model_files: one saved model per member of spec, in the same order: `model.keras`
                files for engine keras, ONNX files for engine onnx.
            max_item_bytes: as in the constructor.
            max_frame_pixels: as in the constructor.
            engine: `keras` or `onnx` (`engines.choose_engine`).

        Raises:
            ModelFileError: a file is missing or cannot be loaded.
            ValueError: the models do not match the spec.
        """
        predictor = cls(
            spec,
            load_models(engine, [Path(f) for f in model_files]),
            max_item_bytes,
            max_frame_pixels,
        )
        predictor.warm_up()
        return predictor

    def warm_up(self) -> None:
        """Compile every member's inference now, so that the first request is not slow."""
        self.predict_hu([np.zeros((8, 8), dtype=np.int16)])

    def predict_hu(self, hu_slices: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Positive-class probability of each slice, the mean over the members.

        Args:
            hu_slices: 2-D slices in HU (a 3-D array is taken as a stack of slices).

        Returns:
            float64 array, one probability per slice.
        """
        slices = list(hu_slices)
        total = np.zeros(len(slices), dtype=np.float64)
        for member, model in zip(self.spec.members, self.models, strict=True):
            for start in range(0, len(slices), PREDICT_BATCH):
                chunk = slices[start : start + PREDICT_BATCH]
                x = np.stack(
                    [
                        model_input(hu, member.windows, member.image_size, member.crop)
                        for hu in chunk
                    ]
                )
                total[start : start + len(chunk)] += infer(model, x)[:, self._positive]
        return total / len(self.models)

    def predict_sources(
        self, sources: Sequence[Source], names: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Predict every slice of DICOM files given as paths, folders or bytes.

        Folders are walked for files (sorted). A file that is not a usable greyscale CT image,
        is larger than `max_item_bytes`, has frames over `max_frame_pixels` or fails in any
        other way while it is read, gets an error row and the others are still predicted.

        Args:
            sources: file paths, folder paths or file contents (or a DicomRejected for an
                item found unusable before, which gets its error row).
            names: what to call each source in the `file` field; default the path, or
                `bytes[i]` for contents. A walked file is `<name>/<relative path>`.

        Returns:
            In source order, one row per slice, `{"file", "p_<positive>", "label",
            "threshold"}` (with `frame` first after `file` for multi-frame files), or one
            `{"file", "error"}` row per unusable item.

        Raises:
            ValueError: names and sources differ in length.
        """
        return list(self.iter_predictions(sources, names))

    def iter_predictions(
        self, sources: Sequence[Source], names: Sequence[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """As `predict_sources`, yielding rows batch by batch (for long folders)."""
        for row, _ in self._rows(sources, names):
            yield row

    def predict_series(
        self, sources: Sequence[Source], names: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """One answer per series (the patient-level operating point of evaluation).

        Slices are grouped by SeriesInstanceUID within their folder. A series is named by its
        folder (`<folder> (series k)` when a folder holds several; `series k` for contents
        sent without a folder), never by a UID.

        Returns:
            Per series `{"series", "p_<positive>", "label", "threshold", "n_slices",
            "n_rejected"}`: the mean slice probability against the patient threshold chosen
            on validation (the slice one when none was). Rejected files count against their
            folder's series; a folder with none usable gets `{"series", "error", ...}`.
        """
        return [row for row, _ in self.series_with_slices(sources, names)]

    def series_with_slices(
        self, sources: Sequence[Source], names: Sequence[str] | None = None
    ) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """As `predict_series`, each series' row with the rows of its slices (those of
        `predict_sources`; none for an error row), e.g. to answer each series as DICOM."""
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        rejected: dict[str, int] = {}
        for row, uid in self._rows(sources, names):
            folder = _folder(row["file"])
            if "error" in row:
                rejected[folder] = rejected.get(folder, 0) + 1
            else:
                groups.setdefault((folder, uid), []).append(row)
        return _series_rows(groups, rejected, self.spec)

    def _rows(
        self, sources: Sequence[Source], names: Sequence[str] | None
    ) -> Iterator[tuple[dict[str, Any], str]]:
        """Every slice's row (or an item's error row), with its SeriesInstanceUID."""
        if names is not None and len(names) != len(sources):
            raise ValueError(f"{len(names)} names for {len(sources)} sources")
        rows: list[tuple[dict[str, Any], str]] = []
        pending: list[tuple[dict[str, Any], np.ndarray]] = []
        for name, item in _expand(sources, names):
            try:
                if isinstance(item, DicomRejected):
                    raise item
                image = _read(self._checked(item), self.max_frame_pixels, self.max_item_bytes)
            except DicomRejected as exc:
                rows.append(({"file": name, "error": str(exc) + _base64_hint(item, exc)}, ""))
                continue
            multi = len(image.hu) > 1
            for frame, hu in enumerate(image.hu):
                row: dict[str, Any] = {"file": name, "frame": frame} if multi else {"file": name}
                rows.append((row, image.series_instance_uid))
                pending.append((row, hu))
            if len(pending) >= PREDICT_BATCH:
                self._fill(pending)
                yield from rows
                rows, pending = [], []
        self._fill(pending)
        yield from rows

    def _checked(self, item: Path | bytes) -> Path | bytes:
        """The item, unless it is over the size limit.

        Raises:
            DicomRejected: it is (reason UNREADABLE: it is not read at all).
        """
        if isinstance(item, bytes):
            size = len(item)
        else:
            try:
                size = item.stat().st_size
            except (OSError, ValueError):  # ValueError: a NUL byte in the path
                return item  # reading it says why it can't be opened
        if size > self.max_item_bytes:
            raise DicomRejected(
                RejectReason.UNREADABLE,
                f"{size} bytes, over the limit of {self.max_item_bytes} per file; send single "
                "CT slices, or split the multi-frame file",
            )
        return item

    def _fill(self, pending: list[tuple[dict[str, Any], np.ndarray]]) -> None:
        if not pending:
            return
        probabilities = self.predict_hu([hu for _, hu in pending])
        threshold = self.spec.threshold
        for (row, _), p in zip(pending, probabilities, strict=True):
            row[self.spec.probability_key] = float(p)
            row["label"] = self.spec.positive_class if p >= threshold else self.spec.negative_class
            row["threshold"] = threshold


def _read(item: Path | bytes, max_frame_pixels: int, max_image_bytes: int) -> CtImage:
    """`read_ct`, raising only DicomRejected: one bad file must never sink the request. An
    unforeseen failure is named by its type only (a library's message may quote the header).
    `max_image_bytes` bounds the decoded size: every frame is held at once here.
    """
    quiet_dicom_library()
    try:
        return read_ct(item, max_frame_pixels, max_image_bytes)
    except DicomRejected:
        raise
    except Exception as exc:
        raise DicomRejected(
            RejectReason.UNREADABLE,
            f"unexpected {type(exc).__name__} while reading it; check the file opens in a DICOM "
            "viewer, and report it if it does",
        ) from None


def _expand(
    sources: Sequence[Source], names: Sequence[str] | None
) -> Iterator[tuple[str, Path | bytes | DicomRejected]]:
    """(name, path or bytes) of every item, a folder replaced by the files under it (or by a
    rejection when it holds none)."""
    for i, source in enumerate(sources):
        if isinstance(source, DicomRejected):
            yield (names[i] if names is not None else f"item[{i}]"), source
            continue
        if isinstance(source, bytes | bytearray | memoryview):
            yield (names[i] if names is not None else f"bytes[{i}]"), bytes(source)
            continue
        path = Path(source)
        name = names[i] if names is not None else str(path)
        if not path.is_dir():
            yield name, path
            continue
        files = list_files(path)  # as ingest lists them: links that lead nowhere too
        if not files:
            yield (
                name,
                DicomRejected(
                    RejectReason.UNREADABLE,
                    "the folder holds no files; give DICOM files or folders",
                ),
            )
        for file in files:
            yield (str(file) if names is None else f"{name}/{file.relative_to(path)}"), file


def _folder(file: str) -> str:
    """The folder a row's file is in; "" for a file named without one (contents)."""
    parent = str(Path(file).parent)
    return "" if parent == "." else parent


def _series_rows(
    groups: Mapping[tuple[str, str], list[dict[str, Any]]],
    rejected: Mapping[str, int],
    spec: ServingSpec,
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The rows of `Predictor.series_with_slices`."""
    threshold = float(spec.thresholds.get("patient", spec.threshold))
    series_of: dict[str, list[str]] = {}
    for folder, uid in groups:
        series_of.setdefault(folder, []).append(uid)
    out = []
    for (folder, uid), slices in groups.items():
        k = series_of[folder].index(uid) + 1
        alone = len(series_of[folder]) == 1
        name = folder if folder and alone else f"{folder} (series {k})" if folder else f"series {k}"
        p = float(np.mean([s[spec.probability_key] for s in slices]))
        row = {
            "series": name,
            spec.probability_key: p,
            "label": spec.positive_class if p >= threshold else spec.negative_class,
            "threshold": threshold,
            "n_slices": len(slices),
            "n_rejected": rejected.get(folder, 0) if alone else 0,
        }
        out.append((row, slices))
    for folder, count in rejected.items():
        if len(series_of.get(folder, [])) != 1:  # none to count them against, or several
            row = {
                "series": folder or "unnamed",
                "error": "files that are not usable CT; the per-slice output says why",
                "n_slices": 0,
                "n_rejected": count,
            }
            out.append((row, []))
    return out


def _base64_hint(item: Path | bytes | DicomRejected, exc: DicomRejected) -> str:
    """A hint when rejected bytes are a base64-encoded DICOM file rather than the file."""
    if not isinstance(item, bytes) or exc.reason != RejectReason.NOT_DICOM:
        return ""
    try:
        decoded = base64.b64decode(item, validate=False)
    except binascii.Error:
        return ""
    if decoded[128:132] != b"DICM":
        return ""
    return (
        "; these bytes are a base64-encoded DICOM file: decode them first (MLflow's scoring "
        "server decodes base64 in dataframe_split and dataframe_records requests, not in inputs)"
    )
