"""One place that writes djpool's lines, so every line carries the same prefix."""

from __future__ import annotations

import sys

PREFIX = "djpool: "


def say(message: str) -> None:
    """Write one ``djpool:`` line to stderr; never raises (stderr may be closed)."""
    try:
        sys.stderr.write(PREFIX + message + "\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - a log line must never break the app
        pass


_said_once: set[str] = set()


def say_once(key: str, message: str) -> None:
    """Like say(), but only the first time ``key`` is seen in this process."""
    if key in _said_once:
        return
    _said_once.add(key)
    say(message)
