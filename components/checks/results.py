"""The outcome of data validation: per expectation, per suite, and for the whole run.

`ValidationReport` is what `run_validation` returns and what the results page and the
summaries read; `DataValidationError` is raised when it failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataValidationError(RuntimeError):
    """The data broke at least one expectation; the message names each one."""


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result.

    Attributes:
        check: the stable check name (meta["check"]).
        description: what is expected, in words.
        expectation_type: the GX expectation, e.g. expect_column_values_to_be_in_set.
        column: the column it looks at, if any.
        success: whether the data met it.
        observed: GX's observed value (aggregate and table expectations).
        unexpected_count: rows that broke it (column map expectations).
        element_count: rows it looked at (column map expectations).
        examples: a few offending rows, each a dict of column -> value.
        error: why the check could not run (e.g. a missing column).
    """

    check: str
    description: str
    expectation_type: str
    column: str | None
    success: bool
    observed: Any = None
    unexpected_count: int | None = None
    element_count: int | None = None
    examples: tuple[dict[str, Any], ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class SuiteOutcome:
    """One suite's result."""

    name: str
    success: bool
    expectations: tuple[ExpectationOutcome, ...]

    @property
    def evaluated(self) -> int:
        return len(self.expectations)

    @property
    def failed(self) -> tuple[ExpectationOutcome, ...]:
        return tuple(e for e in self.expectations if not e.success)


@dataclass(frozen=True)
class ValidationReport:
    """The result of all suites, and where their results page is."""

    suites: tuple[SuiteOutcome, ...]
    docs_index: Path

    @property
    def success(self) -> bool:
        return all(s.success for s in self.suites)

    def suite(self, name: str) -> SuiteOutcome:
        """The outcome of the suite called `name`.

        Raises:
            KeyError: no such suite was run.
        """
        for s in self.suites:
            if s.name == name:
                return s
        raise KeyError(f"no suite {name!r}; ran {[s.name for s in self.suites]}")

    def failed_checks(self) -> set[str]:
        """The names of the failed checks, as "suite.check"."""
        return {f"{s.name}.{e.check}" for s in self.suites for e in s.failed}
