"""One database's pool: SQLAlchemy's QueuePool wired with djpool's events, and the checkout.

The QueuePool owns physical connections; Django only ever sees the raw driver
connection of a checked-out one. Extension happens through SQLAlchemy's pool
events (``reset`` on every return, ``checkout`` to finish the reset and check
health, ``checkin`` to stamp idle time, ``connect``/``invalidate`` to count),
never by subclassing. How long a checkout waits, and when it gives up, is
decided in one place: ``Pool.checkout``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from threading import get_ident
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import QueuePool

from djpool import health, metrics, reset
from djpool.config import PoolSettings
from djpool.counters import PoolCounters

# How long one wait inside SQLAlchemy lasts. A waiter wakes at once when a
# connection comes back; the slice only bounds how late it notices that a
# concurrent connect failed (SQLAlchemy does not wake waiters for that).
# Pool.checkout loops over slices until POOL_TIMEOUT.
WAIT_SLICE_SECONDS = 0.1


class PoolExhausted(Exception):
    """No connection came back within POOL_TIMEOUT (the caller words the error for its users)."""


class ConnectFailure:
    """The last failed attempt to open a connection, for waiters to see.

    Kept apart from the counters: it is not a statistic but the reason a
    waiting checkout gives up early (the server refuses, so waiting it out
    would only delay the same error).
    """

    def __init__(self) -> None:
        self._last: tuple[float, BaseException] | None = None

    def record(self, error: BaseException) -> None:
        self._last = (time.monotonic(), error)  # one assignment: readers never see half of it

    def since(self, started: float) -> BaseException | None:
        """The failure if one happened at or after ``started`` (time.monotonic())."""
        last = self._last
        return last[1] if last is not None and last[0] >= started else None


@dataclass(eq=False)
class Pool:
    """A QueuePool with its settings, counters and the checkout's waiting rule."""

    queue_pool: QueuePool
    settings: PoolSettings
    counters: PoolCounters = field(default_factory=PoolCounters)
    connect_failure: ConnectFailure = field(default_factory=ConnectFailure, repr=False)

    def checkout(self) -> Any:
        """A connection (SQLAlchemy's proxy of it), waiting at most POOL_TIMEOUT for one.

        Raises PoolExhausted when none came back in time, or the error of a
        connect that failed while this checkout waited.
        """
        counters = self.counters
        started = time.monotonic()
        deadline = started + self.settings.timeout
        waiting, me = counters.waiting, get_ident()
        waiting.add(me)  # inline, not a method: this runs on every request
        try:
            while True:
                try:
                    fairy = self.queue_pool.connect()
                    break
                except PoolTimeout as error:
                    failure = self.connect_failure.since(started)
                    if failure is not None:
                        raise type(failure)(str(failure)) from None
                    if time.monotonic() >= deadline:
                        counters.timeouts += 1
                        raise PoolExhausted(self.settings) from error
        finally:
            waiting.discard(me)
        counters.waits.add(time.monotonic() - started)
        return fairy

    def stats(self, reset_waits: bool = False) -> dict[str, Any]:
        """Settings, state now, totals and recent waits, as one plain dict."""
        queue_pool = self.queue_pool
        return {
            "size": self.settings.size,
            "max_overflow": self.settings.max_overflow,
            "checked_out": queue_pool.checkedout(),
            "idle": queue_pool.checkedin(),
            "overflow": max(0, queue_pool.overflow()),
            **self.counters.totals(),
            **self.counters.waits.summary(reset=reset_waits),
        }

    def idle_connections(self) -> list[Any]:
        """The driver connections waiting in the pool, read without checking them out.

        The one place that reads SQLAlchemy's private queue: a forked child
        must find its parent's idle connections without touching them.
        """
        queue = getattr(self.queue_pool, "_pool", None)
        records = list(getattr(queue, "queue", ()))
        return [
            record.dbapi_connection for record in records if record.dbapi_connection is not None
        ]

    def status(self) -> str:
        """SQLAlchemy's one-line status of the pool."""
        return str(self.queue_pool.status())

    def dispose(self) -> None:
        """Close the idle connections; checked-out ones are closed when they come back."""
        self.queue_pool.dispose()


def build(
    settings: PoolSettings,
    driver: str,
    creator: Callable[[], Any],
    *,
    name: str,
    ping_every_checkout: bool = False,
    discard: bool = True,
) -> Pool:
    """A Pool sized by ``settings`` whose connections come from ``creator``.

    ping_every_checkout: one round trip before every reuse, what Django's
        CONN_HEALTH_CHECKS=True asks for. Off, the cheap socket check in
        ``health`` still catches connections the server closed.
    discard: DISCARD ALL at checkin; False behind a transaction pooler, where
        the reset is client-side only (reset.py says why).
    """
    failure = ConnectFailure()

    def connect() -> Any:
        try:
            return creator()
        except Exception as error:
            failure.record(error)
            raise

    # No SQLAlchemy dialect: the pool's own stub closes, rolls back and hands
    # out the driver connection exactly as the PostgreSQL dialects do for a
    # synchronous driver, and a pool without an Engine never asks a dialect
    # whether an error is a disconnect (djpool's events decide that). Importing
    # the psycopg/psycopg2 dialect cost about 30 ms and some MB per process.
    queue_pool = QueuePool(
        connect,
        pool_size=settings.size,
        max_overflow=settings.max_overflow,
        timeout=min(settings.timeout, WAIT_SLICE_SECONDS),
        recycle=settings.recycle if settings.recycle > 0 else -1,
        reset_on_return=None,  # our reset event does rollback (+ DISCARD ALL)
        use_lifo=True,  # reuse the warmest connection; idle ones age out by recycle
        logging_name=name,
    )
    pool = Pool(queue_pool, settings, connect_failure=failure)
    _listen(queue_pool, pool.counters, ping_every_checkout, name, discard)
    return pool


def _listen(
    queue_pool: QueuePool,
    counters: PoolCounters,
    ping_every_checkout: bool,
    name: str,
    discard: bool = True,
) -> None:
    """Wire djpool's events: reset at checkin; at checkout finish it, check health, count.

    name: the pool's alias, for the event lines (djpool.metrics) of a failed
    reset and of a connection the server closed.
    """

    def reset_failed(reason: str) -> None:
        metrics.reset_failed(name, reason)

    def on_checkout(dbapi_connection: Any, connection_record: Any, proxy: Any) -> None:
        # One listener, not three: each costs a dispatch per checkout.
        info = connection_record.info
        try:
            reset.finish(dbapi_connection, info)  # read the answer of the DISCARD ALL sent
        except reset.ResetFailed as error:
            counters.reset_failures += 1
            reset_failed(f"{type(error).__name__}: {error}")
            raise DisconnectionError(
                f"djpool: the reset of a pooled connection failed: {error}"
            ) from error
        if not health.is_alive(dbapi_connection, info, ping_every_checkout):
            metrics.closed_connection_found(name)
            raise DisconnectionError("djpool: pooled connection was closed by the server")
        counters.checkouts += 1

    def on_reset(dbapi_connection: Any, connection_record: Any, reset_state: Any = None) -> None:
        if not reset.on_reset(
            dbapi_connection, connection_record, reset_state, reset_failed, discard=discard
        ):
            counters.reset_failures += 1

    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        counters.connects += 1

    def on_invalidate(dbapi_connection: Any, connection_record: Any, error: Any) -> None:
        counters.invalidated += 1

    event.listen(queue_pool, "connect", on_connect)
    event.listen(queue_pool, "checkout", on_checkout)
    event.listen(queue_pool, "checkin", health.on_checkin)
    event.listen(queue_pool, "reset", on_reset)
    event.listen(queue_pool, "invalidate", on_invalidate)
