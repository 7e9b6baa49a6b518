"""The check that a generated page loads no script, style or font from the network."""

from __future__ import annotations

import re

_REMOTE = re.compile(
    r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*[\"']?\s*(https?:)?//"
    r"|@import\s+(url\()?[\"']?\s*(https?:)?//"
    r"|url\(\s*[\"']?\s*(https?:)?//",
    re.IGNORECASE,
)


def remote_loads(page: str) -> list[str]:
    """What a page would fetch from another host (plain links to follow are fine)."""
    return [m.group(0) for m in _REMOTE.finditer(page)]


def assert_offline(page: str) -> None:
    loads = remote_loads(page)
    assert not loads, f"the page loads from the network: {loads[:5]}"
