"""Return a connection to the pool with nothing of its last user left on it.

Why DISCARD ALL: one statement drops every kind of session state a request can
leave behind (SET and set_config values, SET ROLE and session authorization,
temp tables, prepared statements, LISTEN, session advisory locks, WITH HOLD
cursors). It refuses to run inside a transaction block, so any transaction is
ended first, whoever started it. If any step fails the error propagates and
SQLAlchemy invalidates the connection: it is closed, never reused.
"""

from __future__ import annotations

from typing import Any

from djpool.log import logger

TRANSACTION_IDLE = 0  # libpq PQTRANS_IDLE, the same number in psycopg2 and psycopg 3


def clean(dbapi_connection: Any) -> None:
    """End any transaction, switch to autocommit and DISCARD ALL."""
    dbapi_connection.rollback()  # ends a transaction the driver started
    if not dbapi_connection.autocommit:
        dbapi_connection.autocommit = True
    with dbapi_connection.cursor() as cursor:
        if int(dbapi_connection.info.transaction_status) != TRANSACTION_IDLE:
            cursor.execute("ROLLBACK")  # one begun with raw SQL, unknown to the driver
        cursor.execute("DISCARD ALL")
    _forget_client_side_state(dbapi_connection)


def _forget_client_side_state(dbapi_connection: Any) -> None:
    """psycopg2 keeps received notices and NOTIFY payloads in lists on the connection."""
    for name in ("notices", "notifies"):
        queue = getattr(dbapi_connection, name, None)
        if isinstance(queue, list):
            del queue[:]


def on_reset(dbapi_connection: Any, connection_record: Any, reset_state: Any = None) -> None:
    """SQLAlchemy ``reset`` event: runs on every return to the pool.

    SQLAlchemy 2.x passes the driver connection and a reset state; 1.4 passes
    its proxy and no state, so unwrap it (setting autocommit on the proxy
    would not reach the driver). A connection that cannot be cleaned is
    invalidated (closed; the pool opens a new one when needed) with one
    warning, instead of SQLAlchemy's traceback for every failed reset.
    """
    if reset_state is not None and reset_state.terminate_only:
        return  # the connection is being closed anyway
    try:
        clean(getattr(dbapi_connection, "dbapi_connection", dbapi_connection))
    except Exception as error:  # noqa: BLE001 - whatever failed, never reuse it
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        logger.warning("djpool: discarded a pooled connection whose reset failed (%s: %s)",
                       type(error).__name__, reason)
        connection_record.invalidate(error)
