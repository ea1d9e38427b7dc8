"""Reading what processes printed: djpool's own lines, and log files from a byte offset.

Tests assert on djpool's output (one start-up line, one line per bad value,
no password), so they need its lines apart from gunicorn's and Django's. And
a server's log is shared by every test of the session: a test notes the
file's size before it acts and reads only what was written after. Standard
library only, so that tests/support/heroku.py (also run as a script) can use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PREFIX = "djpool:"
RESULT = "RESULT "


def djpool_lines(text: str) -> list[str]:
    """The lines of ``text`` that djpool printed (every one starts with ``djpool:``)."""
    return [line for line in text.splitlines() if line.startswith(PREFIX)]


def script_results(text: str, prefix: str = RESULT) -> dict[str, Any]:
    """Merge the JSON objects a test script printed on lines that start with ``prefix``.

    The scripts the tests run in a stack's Python (Django set up, the shim
    loaded) report what they saw as ``RESULT {json}`` lines on stdout, apart
    from whatever Django and djpool print.
    """
    merged: dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            merged.update(json.loads(line[len(prefix) :]))
    return merged


def size(path: str | os.PathLike[str]) -> int:
    """The file's size now (0 if it does not exist yet): where ``read_since`` starts later."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def read_since(path: str | os.PathLike[str], offset: int) -> str:
    """What was written to the file after byte ``offset`` ("" if there is no file)."""
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def read_text(path: str | os.PathLike[str]) -> str:
    """The whole file as text ("" if it does not exist yet, e.g. before a process started)."""
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""
