"""Views the fault and security tests (test_faults.py, test_security.py) add to views.py.

- /pool/ shows this worker's djpool pools without touching the database, so a
  test can see what is checked out, what was invalidated and which backends
  wait in the pool.
- /pause-in-atomic/ leaves its connection idle inside a transaction until the
  test says go on, so the test can break the link between two statements.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from django.db import Error as DjangoDatabaseError
from django.db import connection, transaction
from django.http import JsonResponse

from core.models import Item

PAUSE_LIMIT_SECONDS = 60.0


def _backend_pid_of(dbapi_connection) -> int | None:
    """The server pid the driver remembers for a connection (no round trip), None if closed."""
    try:
        info = getattr(dbapi_connection, "info", None)
        if info is not None and hasattr(info, "backend_pid"):  # psycopg 3
            return info.backend_pid
        return dbapi_connection.get_backend_pid()  # psycopg2
    except Exception:  # noqa: BLE001 - a closed connection has no pid to show
        return None


def _is_broken(dbapi_connection) -> bool:
    """True if the driver knows the connection is closed or lost (no round trip)."""
    closed = getattr(dbapi_connection, "closed", False)  # psycopg 3: bool; psycopg2: 0, 1, 2
    return bool(closed) or bool(getattr(dbapi_connection, "broken", False))


def pool(request):
    """This worker's pools: {"pid": worker pid, "pools": [...]}, "pools" null without djpool.

    Per pool: alias, dbname, size, checkedin, checkedout, overflow (SQLAlchemy's
    count: connections open minus size), connects, checkouts, invalidated (from
    djpool's stats), idle_backend_pids, the server pids of the connections
    waiting in the pool, and idle_broken, how many of those the driver knows to
    be closed or lost. With ?repr=1 also the repr() of the registry, the entry
    and the pool, and the pool's status() line, which the security tests search
    for passwords.
    """
    startup = sys.modules.get("djpool.startup")
    registry = startup.registry() if startup is not None else None
    if registry is None:
        return JsonResponse({"pid": os.getpid(), "pools": None})
    with_repr = request.GET.get("repr") == "1"
    pools = []
    for entry in registry.entries():
        stats = entry.stats()
        idle = entry.idle_connections()
        shown = {
            "alias": stats["alias"],
            "dbname": stats["database"],
            "size": stats["size"],
            "checkedin": stats["idle"],
            "checkedout": stats["checked_out"],
            "overflow": stats["checked_out"] + stats["idle"] - stats["size"],
            "connects": stats["connects"],
            "checkouts": stats["checkouts"],
            "invalidated": stats["invalidated"],
            "idle_backend_pids": [_backend_pid_of(connection) for connection in idle],
            "idle_broken": sum(1 for connection in idle if _is_broken(connection)),
        }
        if with_repr:
            shown.update(
                registry_repr=repr(registry),
                entry_repr=repr(entry),
                pool_repr=repr(entry.pool),
                status=entry.pool.status(),
            )
        pools.append(shown)
    return JsonResponse({"pid": os.getpid(), "pools": pools})


def pause_in_atomic(request):
    """Insert an item in transaction.atomic(), wait for a file, then query again and commit.

    ?name= the item's name; ?release= a path: the view waits (at most 60 s)
    until that file exists, its connection idle in the open transaction, then
    runs SELECT pg_backend_pid() and commits. Answers {"pid"}; a database
    error is answered like /sql/: HTTP 500 with {"error", "driver_error", "message", "pid"}.
    """
    release = Path(request.GET["release"])
    backend_pid = None
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                backend_pid = cursor.fetchone()[0]
            Item.objects.create(name=request.GET.get("name", "paused-in-atomic"), value=-2)
            deadline = time.monotonic() + PAUSE_LIMIT_SECONDS
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.01)  # the app "working" between two statements
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                cursor.fetchone()
    except DjangoDatabaseError as error:
        cause = error.__cause__
        return JsonResponse(
            {
                "error": type(error).__name__,
                "driver_error": type(cause).__name__ if cause is not None else None,
                "message": str(error),
                "pid": backend_pid,
            },
            status=500,
        )
    return JsonResponse({"pid": backend_pid})
