"""Return a connection to the pool with nothing of its last user left on it.

Why DISCARD ALL: one statement drops every kind of session state a request can
leave behind (SET and set_config values, SET ROLE and session authorization,
temp tables, prepared statements, LISTEN, session advisory locks, WITH HOLD
cursors). It refuses to run inside a transaction block, so any transaction is
ended first, whoever started it. If any step fails the error propagates and
SQLAlchemy invalidates the connection: it is closed, never reused.

Behind a transaction pooler (``discard=False``, see pooler.py) the reset is
client-side only: the transaction is ended and autocommit put back, with no
DISCARD ALL. There the session belongs to the pooler's server connection,
which serves every client: DISCARD ALL runs on whichever one is free (often
not the one the request used), resets the parameters the pooler keeps for
this client (its time zone, so Django must SET it again), and costs one more
transaction per request. Measured (docs/transaction-pooling.md): half the
throughput, and about half of the requests still saw another client's SET.
"""

from __future__ import annotations

import select
from collections.abc import Callable, MutableMapping
from typing import Any

from djpool.log import warn

TRANSACTION_IDLE = 0  # libpq PQTRANS_IDLE, the same number in psycopg2 and psycopg 3
COMMAND_OK = 1  # libpq PGRES_COMMAND_OK
PENDING = "djpool_reset_pending"  # connection_record.info key: DISCARD ALL sent, not read
WAIT_SECONDS = 30.0  # longest wait for a sent DISCARD ALL's answer at checkout


class ResetFailed(Exception):
    """The DISCARD ALL sent at checkin did not succeed (seen at the next checkout)."""


def clean(
    dbapi_connection: Any, info: MutableMapping[str, Any] | None = None, *, discard: bool = True
) -> None:
    """End any transaction, switch to autocommit and (unless ``discard`` is false) DISCARD ALL.

    With ``info`` (the pool record's dict) and a psycopg 3 connection, DISCARD ALL
    is only sent: its answer is read by ``finish`` at the next checkout, so the
    request's thread does not wait a round trip for it on the way out.
    """
    dbapi_connection.rollback()  # ends a transaction the driver started
    if not dbapi_connection.autocommit:
        dbapi_connection.autocommit = True
    if discard and info is not None and _can_defer(dbapi_connection):
        _send(dbapi_connection.pgconn, b"DISCARD ALL")
        info[PENDING] = True
        return
    open_transaction = int(dbapi_connection.info.transaction_status) != TRANSACTION_IDLE
    if open_transaction or discard:
        with dbapi_connection.cursor() as cursor:
            if open_transaction:
                cursor.execute("ROLLBACK")  # one begun with raw SQL, unknown to the driver
            if discard:
                cursor.execute("DISCARD ALL")
    _forget_client_side_state(dbapi_connection)


def _can_defer(dbapi_connection: Any) -> bool:
    """psycopg 3, idle, and no prepared statements psycopg would need to forget.

    psycopg 3 exposes libpq (``pgconn``) to send a statement without waiting.
    Its own prepared-statement cache only forgets what DISCARD ALL dropped when
    it runs the statement itself, so with ``prepare_threshold`` set (Django's
    default is None) the reset waits as before.
    """
    pgconn = getattr(dbapi_connection, "pgconn", None)
    return (
        pgconn is not None
        and getattr(dbapi_connection, "prepare_threshold", 0) is None
        and int(pgconn.transaction_status) == TRANSACTION_IDLE
        and getattr(dbapi_connection, "_pipeline", None) is None
    )


def _send(pgconn: Any, query: bytes) -> None:
    pgconn.send_query(query)
    while pgconn.flush():  # 1 while libpq still has bytes to write (non-blocking socket)
        select.select([], [pgconn.socket], [], WAIT_SECONDS)


def finish(dbapi_connection: Any, info: MutableMapping[str, Any]) -> None:
    """At checkout: read the answer of a DISCARD ALL sent at checkin (usually already here).

    Raises ResetFailed if it failed or the connection broke meanwhile; the
    caller refuses the connection then.
    """
    if not info.pop(PENDING, False):
        return
    pgconn = dbapi_connection.pgconn
    try:
        pgconn.consume_input()
        while pgconn.is_busy():
            if not select.select([pgconn.socket], [], [], WAIT_SECONDS)[0]:
                raise ResetFailed(f"no answer to DISCARD ALL within {WAIT_SECONDS:g} s")
            pgconn.consume_input()
        failed = None
        while (result := pgconn.get_result()) is not None:
            if int(result.status) != COMMAND_OK:
                failed = result.error_message.decode(errors="replace").strip()
    except ResetFailed:
        raise
    except Exception as error:  # noqa: BLE001 - a broken socket: never hand it out
        raise ResetFailed(f"{type(error).__name__}: {error}") from error
    if failed is not None:
        raise ResetFailed(failed)


def _forget_client_side_state(dbapi_connection: Any) -> None:
    """psycopg2 keeps received notices and NOTIFY payloads in lists on the connection."""
    for name in ("notices", "notifies"):
        queue = getattr(dbapi_connection, name, None)
        if isinstance(queue, list):
            del queue[:]


def on_reset(
    dbapi_connection: Any,
    connection_record: Any,
    reset_state: Any = None,
    report: Callable[[str], None] | None = None,
    *,
    discard: bool = True,
) -> bool:
    """SQLAlchemy ``reset`` event: runs on every return to the pool; False if the reset failed.

    SQLAlchemy 2.x passes the driver connection and a reset state; 1.4 passes
    its proxy and no state, so unwrap it (setting autocommit on the proxy
    would not reach the driver). A connection that cannot be cleaned is
    invalidated (closed; the pool opens a new one when needed) with one
    warning, instead of SQLAlchemy's traceback for every failed reset.

    report: called with ``"ErrorName: reason"`` instead of that warning (the
        pool passes its rate-limited event line, djpool.metrics.reset_failed).
    discard: False behind a transaction pooler: no DISCARD ALL (see above).
    """
    if reset_state is not None and reset_state.terminate_only:
        return True  # the connection is being closed anyway
    try:
        clean(
            getattr(dbapi_connection, "dbapi_connection", dbapi_connection),
            getattr(connection_record, "info", None),
            discard=discard,
        )
    except Exception as error:  # noqa: BLE001 - whatever failed, never reuse it
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        reason = f"{type(error).__name__}: {reason}"
        if report is not None:
            report(reason)
        else:
            warn(f"discarded a pooled connection whose reset failed ({reason})")
        connection_record.invalidate(error)
        return False
    return True
