"""Build one SQLAlchemy QueuePool for one database, wired with djpool's events.

The pool owns physical connections; Django only ever sees the raw driver
connection of a checked-out one. Extension happens through SQLAlchemy's pool
events (``reset`` on every return, ``checkout`` for liveness, ``checkin`` to
stamp idle time, ``connect`` for counters), never by subclassing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool import QueuePool

from djpool import health, reset
from djpool.config import PoolSettings

_DIALECTS: dict[str, Any] = {}

# How long one wait inside SQLAlchemy lasts. A waiter wakes at once when a
# connection comes back; the slice only bounds how late it notices that a
# concurrent connect failed (SQLAlchemy does not wake waiters for that).
# The caller loops until POOL_TIMEOUT (see django_patch.checkout).
WAIT_SLICE_SECONDS = 0.1


@dataclass
class PoolCounters:
    """Plain counters, cheap to keep and easy to read in tests and logs."""

    connects: int = 0
    checkouts: int = 0
    invalidated: int = 0
    failed_connect_at: float = float("-inf")  # time.monotonic() of the last failed connect
    failed_connect: BaseException | None = None


def dialect_for(driver: str) -> Any:
    """The SQLAlchemy PostgreSQL dialect for Django's driver module (psycopg or psycopg2).

    The pool uses it to close connections and recognise disconnect errors the
    way that driver needs; one instance per driver is enough. SQLAlchemy 1.4
    has no psycopg 3 dialect: None then, and the pool's generic one is used.
    """
    if driver not in _DIALECTS:
        try:
            if driver == "psycopg2":
                from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2 as cls
            elif driver == "psycopg":
                from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg as cls
            else:
                raise ValueError(f"unsupported PostgreSQL driver {driver!r}")
        except ImportError:
            _DIALECTS[driver] = None
        else:
            # SQLAlchemy 2.x names the loader import_dbapi(); 1.4 names it dbapi().
            load_dbapi = getattr(cls, "import_dbapi", None) or cls.dbapi
            _DIALECTS[driver] = cls(dbapi=load_dbapi())
    return _DIALECTS[driver]


def build(settings: PoolSettings, driver: str, creator: Callable[[], Any], *,
          name: str, ping_every_checkout: bool = False) -> tuple[QueuePool, PoolCounters]:
    """A QueuePool sized by ``settings`` whose connections come from ``creator``.

    ping_every_checkout: one round trip before every reuse, what Django's
        CONN_HEALTH_CHECKS=True asks for. Off, the cheap socket check in
        ``health`` still catches connections the server closed.
    """
    dialect = dialect_for(driver)
    pool = QueuePool(
        creator,
        pool_size=settings.size,
        max_overflow=settings.max_overflow,
        timeout=min(settings.timeout, WAIT_SLICE_SECONDS),
        recycle=settings.recycle if settings.recycle > 0 else -1,
        reset_on_return=None,  # our reset event does rollback + DISCARD ALL
        use_lifo=True,  # reuse the warmest connection; idle ones age out by recycle
        logging_name=name,
        **({"dialect": dialect} if dialect is not None else {}),
    )
    counters = PoolCounters()

    def count_connect(dbapi_connection: Any, connection_record: Any) -> None:
        counters.connects += 1

    check = health.checkout_check(ping_every_checkout)

    def on_checkout(dbapi_connection: Any, connection_record: Any, proxy: Any) -> None:
        check(dbapi_connection, connection_record, proxy)  # raises for a dead connection
        counters.checkouts += 1  # one listener, not two: each costs a dispatch per checkout

    def count_invalidate(dbapi_connection: Any, connection_record: Any, error: Any) -> None:
        counters.invalidated += 1

    event.listen(pool, "connect", count_connect)
    event.listen(pool, "checkout", on_checkout)
    event.listen(pool, "checkin", health.on_checkin)
    event.listen(pool, "reset", reset.on_reset)
    event.listen(pool, "invalidate", count_invalidate)
    return pool, counters
