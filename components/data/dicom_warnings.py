"""Keep the DICOM library from quoting header values on the console or in a log.

pydicom reports a value that breaks its VR's rules (`Invalid value for VR UI:
'1.2.840...0012...'`, `Invalid value for VR IS: 'MRN98765432x'`) as a warning and as a
record of its logger, quoting the value, and a header value may be a name or a record
number typed into the wrong field. `quiet_dicom_library` turns that off for the process:
pydicom no longer validates the values it reads (it still reads them; the project checks
each value it uses and says in its own words, without the value, what is wrong), its
warnings are not shown, and its logger's records (of `pydicom` and every module under it)
go nowhere, whatever logging the scheduler or the model server configures. Ingest, predict
and the served model call it before reading a file.
"""

from __future__ import annotations

import logging
import warnings

from pydicom import config

LIBRARY = "pydicom"
# Every module of the library, for the warnings filter (a regular expression on the module
# a warning is attributed to).
_MODULES = rf"{LIBRARY}(\.|$)"


def quiet_dicom_library() -> None:
    """Stop pydicom from quoting header values in warnings and log records (idempotent).

    Reading is unchanged: a value that breaks its VR is read as it is and checked where the
    project uses it. Code that needs pydicom's warnings (the truncation test of
    `dicom_header.read_header`) still records them inside its own `catch_warnings`.
    """
    config.settings.reading_validation_mode = config.IGNORE
    logger = logging.getLogger(LIBRARY)
    # Records stop at the library's own (null) handler instead of reaching the root's.
    logger.propagate = False
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    warnings.filterwarnings("ignore", module=_MODULES)
