"""Pull over DIMSE: C-FIND (study root) to find studies, series and instances, C-GET to
fetch them on the same association, so no inbound port or registered AE title is needed.

The C-GET proposes one presentation context per transfer syntax for each CT storage class,
so the PACS sends every instance in the syntax it stores, byte for byte.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from components.pacs.remote import Deliver, PacsError, RemoteSeries, TransientError
from components.pacs.source import DimseSource

FILTERS = {"accession_number": "AccessionNumber", "patient_id": "PatientID"}
STORAGE = (CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage)
SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)
PENDING = (0xFF00, 0xFF01)
SUCCESS = 0x0000
WARNING = 0xB000  # some sub-operations failed: the received count tells which


class DimseRemote:
    """A DICOM peer queried with C-FIND and fetched from with C-GET."""

    def __init__(self, source: DimseSource, calling_aet: str, timeout_s: float) -> None:
        self.source = source
        self.calling_aet = calling_aet
        self.timeout_s = timeout_s
        # pynetdicom's own log lines may quote identifiers of the datasets it handles
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)

    @property
    def _where(self) -> str:
        return f"{self.source.aet}@{self.source.host}:{self.source.port}"

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.maximum_pdu_size = 0  # no limit: a CT slice in one PDU, not in 32 of 16 KiB
        return ae

    @contextmanager
    def _association(
        self, ae: AE, handlers: list | None = None, roles: list | None = None
    ) -> Iterator[Association]:
        try:  # a closed port fails here at once, not after pynetdicom's timeouts
            socket.create_connection((self.source.host, self.source.port), self.timeout_s).close()
        except OSError as exc:
            raise TransientError(f"{self._where} unreachable ({type(exc).__name__})") from None
        assoc = ae.associate(
            self.source.host,
            self.source.port,
            ae_title=self.source.aet,
            ext_neg=roles,
            evt_handlers=handlers,
        )
        if assoc.is_rejected:
            raise PacsError(
                f"{self._where} refused the association; check the called AE title and that the "
                f"PACS accepts the calling AE title {self.calling_aet} (params pull.calling_aet)"
            )
        if not assoc.is_established:
            raise TransientError(f"{self._where} unreachable (no association)")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _find(self, query: Dataset) -> list[Dataset]:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        found = []
        with self._association(ae) as assoc:
            for status, identifier in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind
            ):
                if not status:
                    raise TransientError(f"{self._where}: C-FIND got no answer")
                code = int(status.Status)
                if code in PENDING and identifier is not None:
                    found.append(identifier)
                elif code != SUCCESS and code not in PENDING:
                    raise PacsError(f"{self._where}: C-FIND failed with status 0x{code:04X}")
        return found

    def find(self, key: str, value: str) -> tuple[int, list[RemoteSeries]]:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        setattr(query, FILTERS[key], value)
        query.StudyInstanceUID = ""
        if key != "patient_id":
            query.PatientID = ""
        studies = self._find(query)
        found: list[RemoteSeries] = []
        for study in studies:
            query = Dataset()
            query.QueryRetrieveLevel = "SERIES"
            query.StudyInstanceUID = study.StudyInstanceUID
            query.SeriesInstanceUID = ""
            query.Modality = ""
            found.extend(
                RemoteSeries(
                    str(study.StudyInstanceUID),
                    str(s.SeriesInstanceUID),
                    str(study.get("PatientID", "") or ""),
                    str(s.get("Modality", "") or ""),
                )
                for s in self._find(query)
            )
        return len(studies), found

    def instances(self, series: RemoteSeries) -> list[str]:
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = series.study_uid
        query.SeriesInstanceUID = series.series_uid
        query.SOPInstanceUID = ""
        return sorted(str(i.SOPInstanceUID) for i in self._find(query))

    def batches(self, sop_uids: list[str], whole: bool) -> list[list[str]]:
        return [sop_uids]

    def fetch(
        self, series: RemoteSeries, sop_uids: list[str], whole: bool, deliver: Deliver
    ) -> None:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        for storage in STORAGE:
            for syntax in SYNTAXES:
                ae.add_requested_context(storage, [syntax])
        roles = [build_role(storage, scp_role=True) for storage in STORAGE]
        failures: list[str] = []

        def store(event: evt.Event) -> int:
            try:
                ds = event.dataset
                ds.file_meta = event.file_meta
                deliver(ds, UID(event.context.transfer_syntax))
            except Exception as exc:  # reported after the C-GET; the sender gets a failure
                failures.append(type(exc).__name__)
                return 0xC211
            return SUCCESS

        with self._association(ae, [(evt.EVT_C_STORE, store)], roles) as assoc:
            for query in _get_queries(series, sop_uids, whole):
                for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
                    if not status:
                        raise TransientError(f"{self._where}: C-GET got no answer")
                    code = int(status.Status)
                    if code not in PENDING and code not in (SUCCESS, WARNING):
                        raise TransientError(
                            f"{self._where}: C-GET failed with status 0x{code:04X}"
                        )
        if failures:
            raise TransientError(
                f"{len(failures)} received instances could not be written ({failures[0]})"
            )


def _get_queries(series: RemoteSeries, sop_uids: list[str], whole: bool) -> Iterator[Dataset]:
    """The whole series in one C-GET when none of it is here yet, else one per instance."""
    for uid in [None] if whole else sop_uids:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES" if uid is None else "IMAGE"
        query.StudyInstanceUID = series.study_uid
        query.SeriesInstanceUID = series.series_uid
        if uid is not None:
            query.SOPInstanceUID = uid
        yield query
