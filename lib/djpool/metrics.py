"""The pool in the logs: an l2met line per pool every POOL_METRICS_INTERVAL, and event lines.

Why the logs: on Heroku a process's stderr is the log stream that log drains
and add-ons (Librato and others) read, and l2met's ``sample#``/``count#``
fields are the form they turn into graphs, as Heroku's own pooler reports.

- The reporter: a daemon thread, started with the process's first pool
  (``pool_opened``), writes one line per live pool every interval::

      djpool: source=web.1 pid=12 alias=default sample#djpool.size=5 ...

  ``count#`` fields count since the previous line; ``sample#`` fields are
  the state now, and the checkout waits of the interval. A line is skipped
  while nothing happened and nothing is held, so an idle app stays quiet.
  After a fork the child starts a reporter of its own with its first pool;
  the parent's is not copied (threads do not survive fork, and its state is
  forgotten at fork time).
- Events: ``pool_exhausted``, ``reset_failed`` and ``closed_connection_found``
  are called by the runtime the moment they happen; each writes at most one
  line a minute per kind and pool, on the ``djpool`` logger.

Standard library only, and nothing here runs on the checkout path: the
reporter reads ``djpool.stats()``, which reads counters the pool keeps anyway.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from djpool import log

EVENT_EVERY_SECONDS = 60.0  # at most one event line per kind and pool in this time
THREAD_NAME = "djpool-metrics"

# The l2met fields of a metrics line, in order: (field, key in the stats dict).
SAMPLES = (
    ("sample#djpool.size", "size"),
    ("sample#djpool.checked_out", "checked_out"),
    ("sample#djpool.idle", "idle"),
    ("sample#djpool.waiting", "waiting"),
)
COUNTS = (
    ("count#djpool.checkouts", "checkouts"),
    ("count#djpool.connects", "connects"),
    ("count#djpool.timeouts", "timeouts"),
    ("count#djpool.invalidated", "invalidated"),
)
WAITS = (
    ("sample#djpool.wait_p95_ms", "wait_p95_ms"),
    ("sample#djpool.wait_max_ms", "wait_max_ms"),
)

PoolStats = Mapping[str, Any]
PoolKey = tuple[str, str, str]


# -- reading the pools: the one place that knows the shape of djpool.stats() -----------


def read_stats() -> list[dict[str, Any]]:
    """Every live pool of this process, its wait window restarted (each line covers its own)."""
    import djpool

    return djpool.stats(reset_waits=True)


def pool_key(stats: PoolStats) -> PoolKey:
    """Which pool a stats dict is about, across reports."""
    return (str(stats.get("alias", "")), str(stats.get("database", "")), str(stats.get("host", "")))


# -- the line -----------------------------------------------------------------------------


def source_name(dyno: str | None, pid: int) -> str:
    """l2met's ``source``: the dyno's name (``web.1``), or ``pid<N>`` without one."""
    return dyno.strip() if dyno and dyno.strip() else f"pid{pid}"


def counts_since(stats: PoolStats, previous: PoolStats | None) -> dict[str, int]:
    """The counters' growth since ``previous`` (the whole count for a new or rebuilt pool)."""
    counts = {}
    for _field, key in COUNTS:
        now = int(stats.get(key, 0))
        before = int(previous.get(key, 0)) if previous is not None else 0
        counts[key] = now - before if now >= before else now  # a rebuilt pool starts at 0
    return counts


def worth_a_line(stats: PoolStats, counts: Mapping[str, int]) -> bool:
    """Something happened, or something is held: an idle pool gets no line."""
    return (
        any(counts.values())
        or int(stats.get("wait_count", 0)) > 0
        or int(stats.get("checked_out", 0)) > 0
        or int(stats.get("waiting", 0)) > 0
    )


def format_line(source: str, pid: int | None, stats: PoolStats, counts: Mapping[str, int]) -> str:
    """One l2met line (without the ``djpool: `` prefix, which ``log.say`` adds).

    pid: shown as its own field when ``source`` is a dyno name, so that the
        lines of two processes of one dyno can be told apart.
    """
    fields = [f"source={source}"]
    if pid is not None:
        fields.append(f"pid={pid}")
    fields.append(f"alias={_token(stats.get('alias', ''))}")
    fields += [f"{field}={int(stats.get(key, 0))}" for field, key in SAMPLES]
    fields += [f"{field}={int(counts.get(key, 0))}" for field, key in COUNTS]
    fields += [f"{field}={_number(stats.get(key, 0.0))}" for field, key in WAITS]
    return " ".join(fields)


def _number(value: Any) -> str:
    """Milliseconds as l2met reads them: plain decimals, at most three places."""
    text = f"{float(value):.3f}".rstrip("0").rstrip(".")
    return text or "0"


def _token(value: Any) -> str:
    """A value safe in a key=value line: no spaces or quotes to split it."""
    text = str(value)
    return "".join(c if c.isprintable() and c not in ' "=' else "_" for c in text) or "_"


# -- the reporter thread -----------------------------------------------------------------


class Reporter:
    """Writes the process's pools every ``interval`` seconds from a daemon thread.

    interval: seconds between reports (POOL_METRICS_INTERVAL); 0 turns it off.
    dyno: the DYNO config var (``web.1``), or None outside Heroku.
    read: the pools' stats (``read_stats``; a test passes its own).
    write: where a line goes (``log.say``: stderr with the ``djpool: `` prefix).
    """

    def __init__(
        self,
        interval: float,
        dyno: str | None,
        *,
        read: Callable[[], list[dict[str, Any]]] = read_stats,
        write: Callable[[str], None] = log.say,
    ) -> None:
        self.interval = interval
        self.dyno = dyno
        self._read = read
        self._write = write
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._previous: dict[PoolKey, PoolStats] = {}

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start the thread unless it runs already or reporting is off."""
        if self.interval <= 0:
            return
        with self._lock:  # pools are built rarely: the lock costs nothing that matters
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread = thread
        thread.start()

    def forget_after_fork(self) -> None:
        """In a forked child: no thread (it did not survive the fork), no parent's counts."""
        self._lock = threading.Lock()
        self._thread = None
        self._previous = {}

    def report(self) -> list[str]:
        """Read the pools and write the lines worth writing; returns them (for tests)."""
        pid = os.getpid()
        source = source_name(self.dyno, pid)
        shown_pid = pid if self.dyno and self.dyno.strip() else None
        lines = []
        current: dict[PoolKey, PoolStats] = {}
        for stats in self._read():
            key = pool_key(stats)
            counts = counts_since(stats, self._previous.get(key))
            current[key] = stats
            if worth_a_line(stats, counts):
                lines.append(format_line(source, shown_pid, stats, counts))
        self._previous = current
        for line in lines:
            self._write(line)
        return lines

    def _run(self) -> None:
        # On a fixed schedule (start + k * interval), so a slow report does not drift it.
        me = self._thread
        next_at = time.monotonic() + self.interval
        while True:
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if not self._is_current(me):
                return
            try:
                self.report()
            except Exception as error:  # noqa: BLE001 - metrics must never break the app
                log.warn_once("metrics-failed", f"metrics report failed ({error!r}); retrying")
            next_at += self.interval
            now = time.monotonic()
            if next_at <= now:  # a report (or a suspended process) overran: skip ahead
                next_at = now + self.interval

    def _is_current(self, thread: threading.Thread | None) -> bool:
        """False once the reporter was replaced (only a forked child replaces it)."""
        return self._thread is thread


# -- events --------------------------------------------------------------------------------


class RateLimiter:
    """At most one go per ``every`` seconds per key; counts what it held back meanwhile."""

    def __init__(
        self, every: float = EVENT_EVERY_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple[str, ...], float] = {}
        self._held: dict[tuple[str, ...], int] = {}

    def allow(self, *key: str) -> int | None:
        """None to stay quiet; else how many were held back since the last go (0 or more)."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.every:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)

    def forget(self) -> None:
        """A forked child starts with no history (and a lock nobody holds)."""
        self._lock = threading.Lock()
        self._last = {}
        self._held = {}


def format_event(
    kind: str,
    source: str,
    alias: str,
    fields: Iterable[tuple[str, Any]],
    held_back: int,
    desc: str,
) -> str:
    """One event line (without the prefix), as Heroku's router writes its own.

    ``event=KIND source= alias=``, the event's fields, ``suppressed=N`` when
    lines were held back, and ``desc="..."``, the sentence a person reads.
    """
    parts = [f"event={kind}", f"source={source}", f"alias={_token(alias)}"]
    parts += [f"{name}={_value(value)}" for name, value in fields]
    if held_back:
        parts.append(f"suppressed={held_back}")
    parts.append(f"desc={_value(desc)}")
    return " ".join(parts)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, int):
        return str(value)
    text = " ".join(str(value).split())
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- the process's reporter and events: what the runtime calls -----------------------------

_reporter: Reporter | None = None
_events = RateLimiter()
_dyno: str | None = None
_on_first_pool: list[Callable[[], None]] = []


def install(interval: float, dyno: str | None) -> None:
    """Set up the process's reporter (not started yet) and the events' source.

    Called once at start-up with the configuration; the thread starts with the
    first pool (``pool_opened``), so a process that never opens one writes nothing.
    """
    global _reporter, _dyno
    _dyno = dyno
    _reporter = Reporter(interval, dyno)
    os.register_at_fork(after_in_child=_after_fork_in_child)


def on_first_pool(callback: Callable[[], None]) -> None:
    """Run ``callback`` when the process opens its first pool (OpenTelemetry registers then)."""
    _on_first_pool.append(callback)


def pool_opened() -> None:
    """Runtime hook: a pool was built. Starts the reporter with the first one."""
    reporter = _reporter
    if reporter is not None and not reporter.running:
        reporter.start()
    while _on_first_pool:
        callback = _on_first_pool.pop(0)
        try:
            callback()
        except Exception as error:  # noqa: BLE001 - never the reason a checkout fails
            log.warn_once(f"first-pool:{callback!r}", f"{error!r}; carrying on")


def _after_fork_in_child() -> None:
    if _reporter is not None:
        _reporter.forget_after_fork()
    _events.forget()


def _event(kind: str, alias: str, fields: Iterable[tuple[str, Any]], desc: str) -> None:
    held_back = _events.allow(kind, alias)
    if held_back is None:
        return
    source = source_name(_dyno, os.getpid())
    log.warn(format_event(kind, source, alias, fields, held_back, desc))


def pool_exhausted(stats: PoolStats, oldest_checkout_seconds: float | None, timeout: float) -> None:
    """Runtime hook: a checkout gave up after POOL_TIMEOUT.

    stats: the pool's ``djpool.stats()`` dict now (read without resetting its waits).
    oldest_checkout_seconds: how long the longest-held connection has been out.
    timeout: POOL_TIMEOUT, for the sentence.
    """
    fields: list[tuple[str, Any]] = [
        (key, int(stats.get(key, 0)))
        for key in ("size", "max_overflow", "checked_out", "idle", "waiting", "timeouts")
    ]
    if oldest_checkout_seconds is not None:
        fields.append(("oldest_checkout_s", round(oldest_checkout_seconds, 3)))
    limit = int(stats.get("size", 0)) + int(stats.get("max_overflow", 0))
    desc = f"all {limit} connections are in use and none came back within POOL_TIMEOUT={timeout:g}s"
    _event("pool_exhausted", str(stats.get("alias", "")), fields, desc)


def reset_failed(alias: str, reason: str) -> None:
    """Runtime hook: a connection came back and could not be cleaned (it was closed).

    reason: ``ExceptionName: first line of its message``.
    """
    _event(
        "reset_failed", alias, [], f"discarded a pooled connection whose reset failed ({reason})"
    )


def closed_connection_found(alias: str) -> None:
    """Runtime hook: a pooled connection the server had closed was found at checkout."""
    _event(
        "server_closed_connection",
        alias,
        [],
        "a pooled connection was closed by the server; replaced at checkout",
    )
