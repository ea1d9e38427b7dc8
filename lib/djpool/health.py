"""Notice a dead idle connection at checkout without paying a round trip.

An idle connection in the pool has nothing to read: the last response was
consumed and the reset left no LISTEN behind. If the server closes it
(pg_terminate_backend, restart, idle timeout, failover) the kernel marks the
socket readable (the FATAL message, then EOF). So a zero-timeout poll() of
the socket is the liveness check; a real ping (SELECT 1) is spent only when
the socket shows something, or after a long idle in which a silent network
failure could have happened. A failed ping raises DisconnectionError, which
tells SQLAlchemy to discard the connection and hand out a fresh one.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import DisconnectionError

from djpool import reset

PING_AFTER_IDLE_SECONDS = 60.0
_CHECKED_IN_AT = "djpool_checked_in_at"
_POLL_EVENTS = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


def socket_has_news(dbapi_connection: Any) -> bool:
    """True if the server sent something (or hung up) while nobody was asking.

    Any doubt (closed connection, a monkey-patched select module without
    poll(), as under gevent) answers True, which only costs a ping.
    """
    try:
        fd = dbapi_connection.fileno()
        poll = getattr(select, "poll", None)  # looked up late: gevent may remove it
        if poll is not None:
            poller = poll()
            poller.register(fd, _POLL_EVENTS)
            return bool(poller.poll(0))
        readable, _, broken = select.select([fd], [], [fd], 0)
        return bool(readable or broken)
    except Exception:  # noqa: BLE001
        return True


def ping(dbapi_connection: Any) -> bool:
    """One round trip; False if the connection is unusable."""
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchall()
        return True
    except Exception:  # noqa: BLE001 - any failure means "do not hand this out"
        return False


def checkout_check(ping_every_checkout: bool) -> Callable[[Any, Any, Any], None]:
    """A SQLAlchemy ``checkout`` listener that refuses connections the server dropped.

    ping_every_checkout: what Django's CONN_HEALTH_CHECKS=True asks for, a
        round trip before every reuse. Off (the default), only the socket check
        and the idle ping run.
    """

    def on_checkout(dbapi_connection: Any, connection_record: Any, proxy: Any) -> None:
        try:
            reset.finish(dbapi_connection, connection_record.info)  # read the reset's answer
        except reset.ResetFailed as error:
            raise DisconnectionError(f"djpool: the reset of a pooled connection failed: "
                                     f"{error}") from error
        checked_in_at = connection_record.info.get(_CHECKED_IN_AT)
        if checked_in_at is None:
            return  # opened for this checkout: nothing to check
        if not ping_every_checkout:
            idle = time.monotonic() - checked_in_at
            if idle < PING_AFTER_IDLE_SECONDS and not socket_has_news(dbapi_connection):
                return
        if not ping(dbapi_connection):
            raise DisconnectionError("djpool: pooled connection was closed by the server")

    return on_checkout


def on_checkin(dbapi_connection: Any, connection_record: Any) -> None:
    """SQLAlchemy ``checkin`` event: remember when the connection went idle."""
    if connection_record is not None:
        connection_record.info[_CHECKED_IN_AT] = time.monotonic()
