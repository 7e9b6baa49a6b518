"""What a failed pipeline run tells a person: what failed, the message, and where to look.

The note is markdown: the scheduler shows it as an artifact of the failed run and it is also
written to a file in the project, so it can be read without the UI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

FAILURE_FILE = ".myelomet/study/last_failure.md"


@dataclass(frozen=True)
class Failure:
    """One failed run.

    Attributes:
        flow: the flow's name (e.g. `study`).
        run: the run's name or id.
        message: the error, as raised.
        stage: the pipeline stage that failed, None when the failure came before any stage.
        places: where to look for more (run page, log files, reports), most useful first.
    """

    flow: str
    run: str
    message: str
    stage: str | None = None
    places: Sequence[str] = ()


def failure_markdown(failure: Failure, when: datetime | None = None) -> str:
    """The failure note: title, what failed, the message verbatim, where to look."""
    at = (when or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    what = f"stage `{failure.stage}`" if failure.stage else "the run itself"
    lines = [
        f"# {failure.flow} run `{failure.run}` failed",
        "",
        f"{at}: {what} failed. Nothing after it ran: the model registry is unchanged by "
        "stages that did not run.",
        "",
        "```",
        failure.message.strip(),
        "```",
    ]
    if failure.places:
        lines += ["", "Where to look:", ""]
        lines += [f"- {place}" for place in failure.places]
    return "\n".join(lines)


def write_failure_note(root: Path, markdown: str) -> Path:
    """Write the note to FAILURE_FILE under the project root (replacing the last one).

    Returns:
        The file written.
    """
    path = root / FAILURE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown + "\n", encoding="utf-8")
    return path
