"""The pools as OpenTelemetry metrics, if the app has opentelemetry-api (djpool never installs it).

Why: on Heroku's Fir generation metrics travel as OpenTelemetry, and an app
that exports them gets the pools under the semantic conventions' names for
database client connection pools, next to its own metrics:

    db.client.connection.count             idle / used connections now
    db.client.connection.max               POOL_SIZE + POOL_MAX_OVERFLOW
    db.client.connection.pending_requests  threads waiting for a connection now
    db.client.connection.timeouts          checkouts that gave up (since start)
    db.client.connection.wait_time         how long checkouts waited (histogram, s; sampled)

each with ``db.client.connection.pool.name`` (the Django alias), and the
state (``db.client.connection.state`` = ``idle``/``used``) on the count.

Observable instruments: nothing runs on the checkout path; the values are read
when the app's metric reader collects. The wait times are recorded into the
histogram at that moment too, from the waits the pool kept since the last
collection: all of them up to RECORDED_WAITS, else that many spread evenly
over their sorted values, so the percentiles hold while the cost stays bounded
(an SDK histogram's record() costs microseconds: one per checkout would cost
more than the checkout's own bookkeeping). The histogram's count is therefore
the waits recorded, not the checkouts.

``install`` is called with the first pool (``metrics.on_first_pool``), and
only if the API can be found: without it nothing of OpenTelemetry is imported.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from djpool.counters import WaitTimes

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
SCOPE = "djpool"
RECORDED_WAITS = 100  # most waits recorded into the histogram per pool and collection


def available() -> bool:
    """True if opentelemetry-api can be imported (found without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec("opentelemetry.metrics") is not None
    except (ImportError, ValueError):  # no "opentelemetry" package at all
        return False


# -- reading the pools: the one place that knows the runtime's shapes -----------------------


def read_pools() -> list[tuple[dict[str, Any], Any]]:
    """(stats, wait times) of every live pool: ``djpool.stats()`` without resetting its waits."""
    from djpool import startup

    registry = startup.registry()
    if registry is None:
        return []
    return [(entry.stats(), entry.counters.waits) for entry in registry.entries()]


class WaitFeed:
    """Hands each checkout wait to the histogram once: the waits since the last collection.

    Reads the pool's bounded sample window (the newest samples, at most its
    length per collection). If the window was restarted in between (the log
    reporter restarts it on every line), the new window is read whole.
    """

    def __init__(self) -> None:
        self._seen: dict[int, tuple[int, int]] = {}  # id(waits) -> (id of its window, count)

    def new_waits(self, waits: WaitTimes) -> list[float]:
        samples, count = waits.window()
        window, seen = self._seen.get(id(waits), (0, 0))
        if window != id(samples) or count < seen:
            seen = 0
        self._seen[id(waits)] = (id(samples), count)
        fresh = min(count - seen, len(samples))
        return list(samples)[len(samples) - fresh :] if fresh > 0 else []


def spread(waits: list[float], most: int = RECORDED_WAITS) -> list[float]:
    """``waits`` if there are at most ``most``; else ``most`` of them evenly spread when sorted."""
    if len(waits) <= most:
        return waits
    ordered = sorted(waits)
    last = len(ordered) - 1
    return [ordered[round(i * last / (most - 1))] for i in range(most)]


# -- the instruments ------------------------------------------------------------------------


class Instruments:
    """The observable instruments of one meter, reading the pools when collected."""

    def __init__(
        self,
        meter: Any,
        observation: Any,
        read: Callable[[], list[tuple[dict[str, Any], Any]]] = read_pools,
    ) -> None:
        self._observation = observation
        self._read = read
        self._feed = WaitFeed()
        self._lock = threading.Lock()
        self.wait_time = meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="The time it took to obtain an open connection from the pool",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[self._count],
            unit="{connection}",
            description="The number of connections that are currently in the state described",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            callbacks=[self._max],
            unit="{connection}",
            description="The maximum number of open connections allowed",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            callbacks=[self._pending],
            unit="{request}",
            description="The number of current pending requests for an open connection",
        )
        meter.create_observable_counter(
            "db.client.connection.timeouts",
            callbacks=[self._timeouts],
            unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to "
            "obtain a connection from the pool",
        )

    def _observe(self, value: float, stats: dict[str, Any], **more: str) -> Any:
        return self._observation(value, {POOL_NAME: str(stats.get("alias", "")), **more})

    def _count(self, options: Any = None) -> Iterable[Any]:
        # The first callback of a collection: the waits since the last one go into
        # the histogram now, and so into this same collection.
        observations = []
        with self._lock:
            for stats, waits in self._read():
                attributes = {POOL_NAME: str(stats.get("alias", ""))}
                for seconds in spread(self._feed.new_waits(waits)):
                    self.wait_time.record(seconds, attributes)
                observations.append(self._observe(stats["idle"], stats, **{STATE: "idle"}))
                observations.append(self._observe(stats["checked_out"], stats, **{STATE: "used"}))
        return observations

    def _max(self, options: Any = None) -> Iterable[Any]:
        return [
            self._observe(stats["size"] + stats["max_overflow"], stats) for stats, _ in self._read()
        ]

    def _pending(self, options: Any = None) -> Iterable[Any]:
        return [self._observe(stats["waiting"], stats) for stats, _ in self._read()]

    def _timeouts(self, options: Any = None) -> Iterable[Any]:
        return [self._observe(stats["timeouts"], stats) for stats, _ in self._read()]


_installed: Instruments | None = None


def install() -> Instruments | None:
    """Register the instruments with the global meter provider, once; None without the API.

    The API's global provider forwards to whatever provider the app sets,
    before or after this runs.
    """
    global _installed
    if _installed is not None or not available():
        return _installed
    api = importlib.import_module("opentelemetry.metrics")
    from djpool import __version__

    meter = api.get_meter(SCOPE, __version__)
    _installed = Instruments(meter, api.Observation)
    return _installed
