"""Where djpool's lines go, and the one place that decides their ``djpool: `` prefix.

Two channels, by when a line is written:

- ``say``: the start-up line (and why start-up gave up), straight to stderr.
  It is written at interpreter start, before the app configured logging,
  and importing ``logging`` there would cost every Python process
  milliseconds.
- ``warn`` / ``warn_once`` / ``info_once``: everything at runtime, through
  the ``djpool`` logger, so an app routes it by naming ``"djpool"`` in
  Django's LOGGING. If nothing configured that logger by its first line, it
  gets one stderr handler that adds the prefix, the level INFO (so an info
  line such as "behind a transaction pooler" shows), and it does not
  propagate (root's handlers would print the line twice).
"""

from __future__ import annotations

import sys
from _thread import allocate_lock  # built in: threading would cost a start-up import

TYPE_CHECKING = False  # typing's flag, without importing typing at interpreter start
if TYPE_CHECKING:
    import logging

PREFIX = "djpool: "
LOGGER_NAME = "djpool"

_logger: logging.Logger | None = None
_setting_up = allocate_lock()  # two threads' first warnings must not add two handlers
_warned: set[str] = set()


def say(message: str) -> None:
    """Write one ``djpool:`` line to stderr; never raises (stderr may be closed)."""
    try:
        sys.stderr.write(PREFIX + message + "\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - a log line must never break the app
        pass


def warn(message: str) -> None:
    """A runtime warning on the ``djpool`` logger (logging reports its own errors, never raises)."""
    logger().warning(message)


def warn_once(key: str, message: str) -> None:
    """Like warn(), but only the first time ``key`` is seen in this process."""
    if key in _warned:
        return
    _warned.add(key)
    warn(message)


def info_once(key: str, message: str) -> None:
    """An info line on the ``djpool`` logger, the first time ``key`` is seen in this process."""
    if key in _warned:
        return
    _warned.add(key)
    logger().info(message)


def logger() -> logging.Logger:
    """The ``djpool`` logger, given a stderr handler on first use unless the app configured it."""
    global _logger
    with _setting_up:
        if _logger is None:
            _logger = _set_up()
    return _logger


def _set_up() -> logging.Logger:
    import logging

    configured = isinstance(logging.Logger.manager.loggerDict.get(LOGGER_NAME), logging.Logger)
    found = logging.getLogger(LOGGER_NAME)
    if not configured:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(PREFIX + "%(message)s"))
        found.addHandler(handler)
        found.setLevel(logging.INFO)
        found.propagate = False
    return found
