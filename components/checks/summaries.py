"""The validation report in other forms: JSON numbers for DVC, the failure message, the
success line and a markdown table."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components import markdown
from components.checks.page import format_row
from components.checks.results import ExpectationOutcome, ValidationReport


def summary(report: ValidationReport) -> dict[str, Any]:
    """Flat numbers DVC can show as metrics.

    Returns:
        {"success": 0|1, "evaluated": n, "failed": k, "<suite>": {"success", "evaluated",
        "failed"}} for each suite.
    """
    out: dict[str, Any] = {
        "success": int(report.success),
        "evaluated": sum(s.evaluated for s in report.suites),
        "failed": sum(len(s.failed) for s in report.suites),
    }
    for s in report.suites:
        out[s.name] = {"success": int(s.success), "evaluated": s.evaluated, "failed": len(s.failed)}
    return out


def write_summary(report: ValidationReport, path: Path) -> Path:
    """Write `summary(report)` as JSON (parent folders created).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary(report), indent=2) + "\n")
    return path


def _evidence(e: ExpectationOutcome) -> str:
    """What went wrong, in one line: the error, the offending rows or the observed value."""
    if e.error:
        return f"could not run: {e.error}"
    if e.unexpected_count:
        rows = "; ".join(format_row(x) for x in e.examples)
        return f"{e.unexpected_count} of {e.element_count} rows" + (
            f", e.g. {rows}" if rows else ""
        )
    if e.expectation_type == "expect_column_to_exist":
        return "column missing"
    if isinstance(e.observed, Mapping):
        return f"observed {format_row(e.observed)}"
    return f"observed {e.observed}"


def failure_message(report: ValidationReport) -> str:
    """Name each failed expectation with a few offending rows.

    Returns:
        A multi-line message, or "" when every suite passed.
    """
    if report.success:
        return ""
    failed = [(s.name, e) for s in report.suites for e in s.failed]
    suites = sorted({name for name, _ in failed})
    lines = [
        f"data validation failed: {len(failed)} expectation(s) in {', '.join(suites)}; "
        f"training must not start. Results page: {report.docs_index}"
    ]
    for name, e in failed:
        column = f" [{e.column}]" if e.column else ""
        lines.append(
            f"  {name}.{e.check}{column}: expected {e.description} ({e.expectation_type}); "
            f"{_evidence(e)}"
        )
    return "\n".join(lines)


def success_line(report: ValidationReport) -> str:
    """The one line printed when every suite passed."""
    counts = ", ".join(f"{s.name} {s.evaluated}" for s in report.suites)
    return (
        f"data validation passed: all {sum(s.evaluated for s in report.suites)} expectations "
        f"met ({counts}); results page: {report.docs_index}"
    )


def markdown_table(report: ValidationReport) -> str:
    """The result as markdown: one table of suites, one of every expectation."""
    status = {True: "passed", False: "**FAILED**"}
    lines = [
        f"Data validation {status[report.success]}. Results page: `{report.docs_index}`",
        "",
        markdown.table(
            ("suite", "result", "evaluated", "failed"),
            [(s.name, status[s.success], s.evaluated, len(s.failed)) for s in report.suites],
        ),
        "",
        markdown.table(
            ("suite", "check", "column", "expected", "result", "evidence"),
            [
                (
                    s.name,
                    e.check,
                    e.column or "",
                    e.description,
                    status[e.success],
                    "" if e.success else _evidence(e),
                )
                for s in report.suites
                for e in s.expectations
            ],
        ),
    ]
    return "\n".join(lines) + "\n"
