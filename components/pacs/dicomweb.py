"""Pull over DICOMweb: QIDO-RS to find studies, series and instances, then WADO-RS in the
transfer syntax the PACS stores (`transfer-syntax=*`), so the pixel data arrive byte for byte
as they were sent: a series none of which is here yet in one streamed response (each
instance handed on as it arrives; per-instance requests cost about 50 ms each against
Orthanc), the missing instances of a partly pulled series one request each."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import UID

from components.pacs.remote import Deliver, PacsError, RemoteSeries, TransientError
from components.pacs.source import DicomWebSource

T = TypeVar("T")
FILTERS = {"accession_number": "AccessionNumber", "patient_id": "PatientID"}
MEDIA_TYPES = (("application/dicom", "*"),)


class DicomWebRemote:
    """A DICOMweb root, one HTTP session per thread."""

    def __init__(self, source: DicomWebSource, timeout_s: float) -> None:
        self.source = source
        self.timeout_s = timeout_s
        self._local = threading.local()
        # its debug lines quote query URLs, which hold accession numbers and PatientIDs
        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)

    def _client(self) -> DICOMwebClient:
        client = getattr(self._local, "client", None)
        if client is None:
            session = requests.Session()
            session.auth = self.source.auth
            if self.source.ca_bundle is not None:
                session.verify = str(self.source.ca_bundle)
            client = DICOMwebClient(self.source.url, session=session, timeout=self.timeout_s)
            client.set_http_retry_params(retry=False)  # pull retries, with its own backoff
            self._local.client = client
        return client

    def find(self, key: str, value: str) -> tuple[int, list[RemoteSeries]]:
        studies = self._call(
            lambda: self._client().search_for_studies(
                search_filters={FILTERS[key]: value}, fields=["PatientID"], get_remaining=True
            )
        )
        found: list[RemoteSeries] = []
        for study in map(Dataset.from_json, studies):
            study_uid = str(study.StudyInstanceUID)
            patient_id = str(study.get("PatientID", "") or "")
            series = self._call(
                lambda uid=study_uid: self._client().search_for_series(
                    uid, fields=["Modality"], get_remaining=True
                )
            )
            found.extend(
                RemoteSeries(
                    study_uid, str(s.SeriesInstanceUID), patient_id, str(s.get("Modality", ""))
                )
                for s in map(Dataset.from_json, series)
            )
        return len(studies), found

    def instances(self, series: RemoteSeries) -> list[str]:
        found = self._call(
            lambda: self._client().search_for_instances(
                series.study_uid, series.series_uid, get_remaining=True
            )
        )
        return sorted(str(Dataset.from_json(i).SOPInstanceUID) for i in found)

    def batches(self, sop_uids: list[str], whole: bool) -> list[list[str]]:
        return [sop_uids] if whole else [[uid] for uid in sop_uids]

    def fetch(
        self, series: RemoteSeries, sop_uids: list[str], whole: bool, deliver: Deliver
    ) -> None:
        if whole:  # one streamed response: each instance is written as it arrives
            self._call(lambda: self._stream(series, deliver))
            return
        for uid in sop_uids:
            ds = self._call(
                lambda uid=uid: self._client().retrieve_instance(
                    series.study_uid, series.series_uid, uid, media_types=MEDIA_TYPES
                )
            )
            deliver(ds, UID(ds.file_meta.TransferSyntaxUID))

    def _stream(self, series: RemoteSeries, deliver: Deliver) -> None:
        for ds in self._client().iter_series(
            series.study_uid, series.series_uid, media_types=MEDIA_TYPES
        ):
            deliver(ds, UID(ds.file_meta.TransferSyntaxUID))

    def _call(self, call: Callable[[], T]) -> T:
        """`call()`, its HTTP failures sorted into PacsError and TransientError."""
        try:
            return call()
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise PacsError(
                    f"{self.source.url} refused the credentials (HTTP {status}); set "
                    "MYELOMET_PACS_USER and MYELOMET_PACS_PASSWORD (or a netrc entry) to an "
                    "account that may read these studies"
                ) from None
            if status >= 500 or status == 429:
                raise TransientError(f"HTTP {status}") from None
            raise PacsError(f"{self.source.url} answered HTTP {status}; check --source") from None
        except requests.exceptions.SSLError as exc:
            raise PacsError(
                f"{self.source.url}: TLS failed ({type(exc).__name__}); pass the hospital's CA "
                "with --ca-bundle"
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(f"{self.source.url} unreachable ({type(exc).__name__})") from None
