"""The privacy check on column names: which columns suggest protected health information.

`phi_columns` matches a column's snake_case name against `PHI_COLUMN_PATTERN`;
`ExpectNoPhiColumns` is the same rule as a Great Expectations table expectation, used by the
manifest and split suites.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

from great_expectations.expectations.expectation import BatchExpectation

# Matched against the snake_case form of a column name (PatientBirthDate -> patient_birth_date).
PHI_COLUMN_PATTERN = (
    r"(?:^|_)(?:\w*name|\w*birth\w*|dob|patient_?i_?ds?|mrn|accession\w*|\w*uids?"
    r"|address|\w*phone|e_?mail|ssn)(?:_|$)"
)


def snake_case(name: str) -> str:
    """Column name in snake_case: `SOPInstanceUID` -> `sop_instance_uid`."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def phi_columns(columns: Sequence[str], pattern: str = PHI_COLUMN_PATTERN) -> list[str]:
    """The columns whose name suggests protected health information.

    Args:
        columns: column names.
        pattern: regular expression searched in each snake_case name.

    Returns:
        The matching names, in their original spelling and order.
    """
    return [c for c in columns if re.search(pattern, snake_case(str(c)))]


class ExpectNoPhiColumns(BatchExpectation):
    """Expect no column whose name suggests PHI: names, birth dates, patient IDs, UIDs.

    The observed value lists the offending columns.
    """

    pattern: str = PHI_COLUMN_PATTERN

    metric_dependencies = ("table.columns",)
    success_keys = ("pattern",)
    args_keys = ("pattern",)
    library_metadata: ClassVar[dict[str, Any]] = {
        "maturity": "experimental",
        "tags": ["myelomet", "privacy"],
        "contributors": ["myelomet"],
    }

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: dict | None = None,
        execution_engine: Any = None,
    ) -> dict[str, Any]:
        found = phi_columns(metrics["table.columns"], self.pattern)
        return {"success": not found, "result": {"observed_value": found}}
