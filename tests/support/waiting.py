"""Polling instead of sleeping: wait for a condition, fail with what was last seen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str | Callable[[], str] | None = None,
) -> T:
    """Call ``condition`` until it returns something truthy, and return that.

    (None, False, 0 or empty: not yet; a condition may return None or the thing it waited for.)

    After ``timeout`` seconds, fail with ``message`` (a string, or a function
    called then, so it can describe the state) and the last value seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(
                f"{text or 'condition not met'} (waited {timeout:g} s; last value: {value!r})"
            )
        time.sleep(interval)
