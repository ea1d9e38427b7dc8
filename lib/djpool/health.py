"""Notice a dead idle connection at checkout without paying a round trip.

An idle connection in the pool has nothing to read: the last response was
consumed and the reset left no LISTEN behind. If the server closes it
(pg_terminate_backend, restart, idle timeout, failover) the kernel marks the
socket readable (the FATAL message, then EOF). So a zero-timeout poll() of
the socket is the liveness check; a real ping (SELECT 1) is spent only when
the socket shows something, or after a long idle in which a silent network
failure could have happened. A connection found dead is refused at checkout
(``pool.build`` raises SQLAlchemy's DisconnectionError, which discards it and
hands out another). Standard library only: the socket check is tested with
pipes in the fast tier.
"""

from __future__ import annotations

import select
import time
from collections.abc import Mapping
from typing import Any

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


def is_alive(dbapi_connection: Any, info: Mapping[str, Any], ping_every_checkout: bool) -> bool:
    """At checkout: False if the server dropped this pooled connection.

    info: the pool record's dict (``on_checkin`` stamps it).
    ping_every_checkout: what Django's CONN_HEALTH_CHECKS=True asks for, a
        round trip before every reuse. Off (the default), only the socket check
        and the idle ping run.
    """
    checked_in_at = info.get(_CHECKED_IN_AT)
    if checked_in_at is None:
        return True  # opened for this checkout: nothing to check
    if not ping_every_checkout:
        idle = time.monotonic() - checked_in_at
        if idle < PING_AFTER_IDLE_SECONDS and not socket_has_news(dbapi_connection):
            return True
    return ping(dbapi_connection)


def on_checkin(dbapi_connection: Any, connection_record: Any) -> None:
    """SQLAlchemy ``checkin`` event: remember when the connection went idle."""
    if connection_record is not None:
        connection_record.info[_CHECKED_IN_AT] = time.monotonic()
