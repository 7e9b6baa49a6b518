"""`myelomet pull`: fetch a labelled cohort from a PACS into the raw layout, de-identified.

For each cohort row the PACS is asked for the row's studies and their series; CT series are
kept, each instance is fetched, de-identified in memory (`deidentify`) and written whole
(`tree`) as `<out>/<CLASS>/<patient>/<series>/<image>.dcm`. A series is complete when the
files on disk number what the PACS listed; a rerun skips complete series without fetching
and fetches only the missing instances of the others. Requests run `max_connections` at a
time with retries and backoff. A failure that ends the pull (unreachable, credentials,
refused association) is one line; what was already written stays. The pull report
(`<name>.pull_report.csv` beside `out`) says what happened to each row, by its line and
patient pseudonym, never by an identifier.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydicom.dataset import Dataset
from pydicom.uid import UID
from tqdm import tqdm

from components.config import PullConfig
from components.data.dicom_warnings import quiet_dicom_library
from components.pacs.cohort import CohortRow, read_cohort
from components.pacs.deidentify import (
    deidentify,
    file_name,
    patient_pseudonym,
    series_pseudonym,
)
from components.pacs.dicomweb import DicomWebRemote
from components.pacs.dimse import DimseRemote
from components.pacs.remote import PacsError, Remote, RemoteSeries, with_retries
from components.pacs.source import DicomWebSource, Source
from components.pacs.tree import PulledTree, SeriesState, write_rows

T = TypeVar("T")
REPORT_COLUMNS = (
    "line",
    "patient",
    "label",
    "series",
    "expected",
    "received",
    "fetched",
    "status",
    "detail",
)


@dataclass
class RowResult:
    """What happened to one cohort row (no identifier in any field)."""

    line: int
    label: str
    patient: str = ""
    series: int = 0
    expected: int = 0
    received: int = 0
    fetched: int = 0
    status: str = "not_tried"
    detail: str = ""


@dataclass
class PullSummary:
    """The result of a pull: a row per cohort row, and the one line that stopped it, if any."""

    out: Path
    report_path: Path
    rows: list[RowResult]
    fatal: str | None = None
    fetched: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def complete_rows(self) -> int:
        return sum(r.status == "complete" for r in self.rows)

    @property
    def ok(self) -> bool:
        """Something could be pulled: at least one row is complete or partly received."""
        return any(r.received > 0 for r in self.rows)


def remote_for(source: Source, cfg: PullConfig) -> Remote:
    """The client of the source's protocol."""
    if isinstance(source, DicomWebSource):
        return DicomWebRemote(source, cfg.timeout_s)
    return DimseRemote(source, cfg.calling_aet, cfg.timeout_s)


def pull(
    remote: Remote,
    cohort: Path,
    out: Path,
    classes: tuple[str, ...],
    key: bytes,
    cfg: PullConfig,
    progress: bool = True,
) -> PullSummary:
    """Pull every row of the cohort CSV into `out`.

    Args:
        remote: the PACS (`remote_for`).
        cohort: the cohort CSV (`cohort.read_cohort`), read in place.
        out: the raw root to fill, `<out>/<CLASS>/<patient>/<series>/<image>.dcm`.
        classes: the class names, params classes.
        key: the de-identification key ingest will use.
        cfg: params pull.
        progress: show a progress bar of instances.

    Returns:
        The summary; its report is written beside `out`.

    Raises:
        FileNotFoundError, ValueError: the cohort CSV is missing or malformed.
    """
    rows = read_cohort(cohort, classes)
    quiet_dicom_library()
    tree = PulledTree(out)
    tree.prepare()
    states = tree.read_state()
    summary = PullSummary(tree.out, tree.report_path, [RowResult(r.line, r.label) for r in rows])
    lock = threading.Lock()
    bar = tqdm(desc="pull", unit="instance", disable=not progress)
    try:
        for row, result in zip(rows, summary.rows, strict=True):
            try:
                _pull_row(remote, row, result, tree, states, key, cfg, bar, lock)
            except PacsError as exc:
                result.status, result.detail = "error", str(exc)
                summary.fatal = str(exc)
                break
            finally:
                tree.write_state(states)
    finally:
        bar.close()
        summary.fetched = sum(r.fetched for r in summary.rows)
        _write_report(summary)
    return summary


def _pull_row(
    remote: Remote,
    row: CohortRow,
    result: RowResult,
    tree: PulledTree,
    states: dict[str, SeriesState],
    key: bytes,
    cfg: PullConfig,
    bar: tqdm,
    lock: threading.Lock,
) -> None:
    """Find the row's CT series and fetch what is missing of each; fills `result`."""

    def retried(call: Callable[[], T], what: str) -> T:
        return with_retries(call, cfg.retries, cfg.backoff_s, what)

    n_studies, found = retried(lambda: remote.find(row.key, row.value), "the query")
    if n_studies == 0:
        result.status = "not_found"
        result.detail = f"no study has this {row.key}"
        return
    ct = [s for s in found if s.modality == "CT"]
    if not ct:
        others = sorted({s.modality or "none" for s in found})
        result.status = "no_ct" if found else "empty"
        result.detail = (
            f"{len(found)} series, none CT (modalities {', '.join(others)})"
            if found
            else f"{n_studies} studies without series"
        )
        return
    patient_ids = {s.patient_id.strip() for s in ct}
    if "" in patient_ids or len(patient_ids) != 1:
        result.status = "skipped"
        result.detail = (
            "its studies have no PatientID"
            if "" in patient_ids
            else "its studies name "
            f"{len(patient_ids)} different PatientIDs; list each patient on its own row"
        )
        return
    patient = patient_pseudonym(key, patient_ids.pop())
    result.patient, result.series = patient, len(ct)
    skipped_other = len(found) - len(ct)

    jobs: list[tuple[RemoteSeries, str, list[str], bool]] = []
    checked: list[str] = []
    for series in ct:
        name = series_pseudonym(key, series.series_uid)
        before = states.get(name)
        on_disk = tree.count(row.label, patient, name)
        if before is not None and before.complete and on_disk == before.expected:
            result.expected += before.expected
            result.received += on_disk
            continue
        uids = retried(lambda s=series: remote.instances(s), "the instance query")
        missing = [u for u in uids if not tree.has(row.label, patient, name, file_name(key, u))]
        states[name] = SeriesState(patient, row.label, name, len(uids), len(uids) - len(missing))
        result.expected += len(uids)
        checked.append(name)
        if missing:
            jobs.append((series, name, missing, len(missing) == len(uids)))
    bar.total = (bar.total or 0) + sum(len(j[2]) for j in jobs)
    bar.refresh()

    def deliver_to(name: str) -> Callable[[Dataset, UID], None]:
        def deliver(ds: Dataset, syntax: UID) -> None:
            target = file_name(key, str(ds.SOPInstanceUID))
            if tree.has(row.label, patient, name, target):
                return
            clean = deidentify(ds, syntax, key, patient, name)
            tree.write(row.label, patient, name, target, clean)
            with lock:
                result.fetched += 1
                bar.update()

        return deliver

    with ThreadPoolExecutor(max_workers=cfg.max_connections) as pool:
        futures = [
            pool.submit(
                retried,
                lambda s=series, b=batch, w=whole, n=name: remote.fetch(s, b, w, deliver_to(n)),
                "fetching a series",
            )
            for series, name, missing, whole in jobs
            for batch in remote.batches(missing, whole)
        ]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        errors = [f.exception() for f in done if f.exception() is not None]
        if errors:
            for f in futures:
                f.cancel()
    for name in checked:
        received = tree.count(row.label, patient, name)
        states[name] = SeriesState(patient, row.label, name, states[name].expected, received)
        result.received += received
    if errors:
        raise errors[0]
    complete = result.received == result.expected and result.expected > 0
    result.status = "complete" if complete else "incomplete"
    notes = []
    if skipped_other:
        notes.append(f"{skipped_other} non-CT series left out")
    if not complete:
        notes.append(f"{result.expected - result.received} instances missing; run pull again")
    result.detail = "; ".join(notes)


def _write_report(summary: PullSummary) -> None:
    write_rows(
        summary.report_path,
        REPORT_COLUMNS,
        [{c: getattr(r, c) for c in REPORT_COLUMNS} for r in summary.rows],
    )
