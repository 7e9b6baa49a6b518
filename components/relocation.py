"""A project folder that was moved or copied, and the MLflow store that still points back.

MLflow's sqlite store keeps absolute `file://` artifact locations: of the experiment, of
every run, logged model and model version. After a move they name a folder that is gone
(`No such artifact`); after a copy, new runs would write into the original. `moved_from`
finds out by comparing the experiment's stored location with this project's
`tracking.artifacts`; `relocate` (`myelomet doctor --relocate`) backs the database up and
rewrites every stored location under the old artifact folder to the new one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from components.tracking import Store

_TEXT_TYPES = ("CHAR", "TEXT", "CLOB")


class ProjectMoved(ValueError):
    """The store's artifact locations are not this project's: it was moved or copied."""


@dataclass(frozen=True)
class Relocation:
    """What `relocate` changed."""

    old: str
    new: str
    rows: int
    backup: Path


def _database(store: Store) -> Path | None:
    """The sqlite file of a local store, when it exists."""
    if not store.tracking_uri.startswith("sqlite:///") or store.artifact_location is None:
        return None
    path = Path(store.tracking_uri.removeprefix("sqlite:///"))
    return path if path.is_file() else None


def moved_from(store: Store) -> str | None:
    """The artifact location the store's experiment holds, when it is not the project's
    (`store.artifact_location`); None when they agree, or for a remote or new store."""
    database = _database(store)
    if database is None:
        return None
    try:
        with sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True) as db:
            row = db.execute(
                "SELECT artifact_location FROM experiments WHERE name = ?", (store.experiment,)
            ).fetchone()
    except sqlite3.Error:
        return None  # not an MLflow database yet; MLflow itself will say more
    if row is None or row[0] in (None, store.artifact_location):
        return None
    return row[0]


def check_not_moved(store: Store) -> None:
    """Raises ProjectMoved, naming the fix, when the project was moved or copied."""
    old = moved_from(store)
    if old is not None:
        raise ProjectMoved(
            f"the MLflow store {store.tracking_uri} keeps the artifacts of experiment "
            f"{store.experiment!r} in {old}, not in this project's {store.artifact_location} "
            "(tracking.artifacts): the project was moved or copied. Run `myelomet doctor "
            "--relocate` to point the store at this folder (the database is backed up first)"
        )


def relocate(store: Store) -> Relocation | None:
    """Rewrite every location stored under the old artifact folder to the project's own.

    The database is copied to `<name>.before-relocate-<UTC time>` first, and the rewrite is
    one transaction: it happens whole or not at all.

    Returns:
        What changed, or None when nothing had to (the store already points here).
    """
    old = moved_from(store)
    database = _database(store)
    if old is None or database is None or store.artifact_location is None:
        return None
    new = store.artifact_location
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    backup = database.with_name(f"{database.name}.before-relocate-{stamp}")
    with sqlite3.connect(database) as source, sqlite3.connect(backup) as copy:
        source.backup(copy)
    prefixes = [(old, new), (_path(old), _path(new))]
    db = sqlite3.connect(database, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")  # waits 5 s for another writer, then raises
        try:
            rows = sum(
                _rewrite(db, table, column, before, after)
                for table, column in _text_columns(db)
                for before, after in prefixes
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    finally:
        db.close()
    return Relocation(old, new, rows, backup)


def _path(uri: str) -> str:
    return unquote(urlparse(uri).path) if uri.startswith("file:") else uri


def _text_columns(db: sqlite3.Connection) -> Iterator[tuple[str, str]]:
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        for _, column, kind, *_ in db.execute(f'PRAGMA table_info("{table}")'):
            if any(t in kind.upper() for t in _TEXT_TYPES):
                yield table, column


def _rewrite(db: sqlite3.Connection, table: str, column: str, before: str, after: str) -> int:
    """Replace the prefix `before` of values that are it or continue it with a `/`."""
    n = len(before)
    cursor = db.execute(
        f'UPDATE "{table}" SET "{column}" = ? || substr("{column}", ?) '
        f'WHERE substr("{column}", 1, ?) = ? '
        f'AND (length("{column}") = ? OR substr("{column}", ?, 1) = \'/\')',
        (after, n + 1, n, before, n, n + 1),
    )
    return cursor.rowcount
