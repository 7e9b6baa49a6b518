"""The data validation results as one self-contained HTML page (`reports/validation/`).

Great Expectations' Data Docs load their scripts and styles from CDNs, so on a hospital
network without a route to the internet they show an unstyled page with empty tables. This
page needs nothing but the file: every value escaped, the styles inline.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from components.checks.results import ExpectationOutcome, ValidationReport

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.passed { color: #1a7f37; font-weight: 600; } .failed { color: #b42318; font-weight: 600; }
code { font-size: 0.85rem; }
"""


def _text(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _status(success: bool) -> str:
    return '<span class="passed">passed</span>' if success else '<span class="failed">FAILED</span>'


def _evidence(e: ExpectationOutcome) -> str:
    """What the data showed: the error, the offending rows, or the observed value."""
    if e.error:
        return f"could not run: {_text(e.error)}"
    if e.unexpected_count:
        rows = "".join(f"<li><code>{_text(format_row(x))}</code></li>" for x in e.examples)
        return f"{e.unexpected_count} of {e.element_count} rows" + (
            f"<ul>{rows}</ul>" if rows else ""
        )
    if e.element_count is not None:
        return f"0 of {e.element_count} rows"
    if e.observed is not None:
        observed = format_row(e.observed) if isinstance(e.observed, Mapping) else e.observed
        return f"observed <code>{_text(observed)}</code>"
    return ""


def format_row(row: Mapping[str, Any]) -> str:
    """`key=value` pairs of an offending row or an observed value, floats to 4 digits."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def render(report: ValidationReport) -> str:
    """The page: a table of suites, then every expectation of each suite."""
    summary = "".join(
        f"<tr><td>{_text(s.name)}</td><td>{_status(s.success)}</td><td>{len(s.expectations)}"
        f"</td><td>{len(s.failed)}</td></tr>"
        for s in report.suites
    )
    sections = []
    for s in report.suites:
        rows = "".join(
            f"<tr><td>{_text(e.check)}</td><td>{_text(e.column or '')}</td>"
            f"<td>{_text(e.description)}</td><td>{_status(e.success)}</td>"
            f"<td>{_evidence(e)}</td></tr>"
            for e in s.expectations
        )
        sections.append(
            f'<h2 id="{_text(s.name)}">{_text(s.name)}: {_status(s.success)}</h2>'
            "<table><tr><th>check</th><th>column</th><th>expected</th><th>result</th>"
            f"<th>evidence</th></tr>{rows}</table>"
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>myelomet data validation</title><style>{_STYLE}</style></head><body>"
        f"<h1>Data validation {_status(report.success)}</h1>"
        "<p>Great Expectations suites on the manifest, the pixel statistics and the split "
        "(<code>myelomet validate</code>). Rows are named by pseudonymous image and patient "
        "ids only.</p>"
        "<table><tr><th>suite</th><th>result</th><th>expectations</th><th>failed</th></tr>"
        f"{summary}</table>{''.join(sections)}</body></html>\n"
    )


def write_page(report: ValidationReport, path: Path) -> Path:
    """Write the page to `path` (the report's `docs_index`), whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(report))
    tmp.replace(path)
    return path
