"""Views of the sample app. Each one does one thing to the database that djpool must survive.

All answer JSON except /health/. A database error in /sql/ is answered with
HTTP 500 and ``{"error": <Django's exception class>, "driver_error": <the
driver's>, "message": ..., "pid": ...}``; any other unhandled exception gives
Django's own 500 page, as in production.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import threading

import django
from django.db import DatabaseError, connection, transaction
from django.db import Error as DjangoDatabaseError
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from core.models import Item

_JSON_SCALARS = (str, int, float, bool, type(None))

# Iterators /iterate/ left unfinished. They are kept so that nothing closes
# their server-side cursor when the view returns, as happens when a traceback,
# a cache or a global holds on to a half-read queryset.
_UNFINISHED_ITERATORS: list = []


@atexit.register
def _drop_unfinished_iterators() -> None:
    for iterator in _UNFINISHED_ITERATORS:
        try:
            iterator.close()
        except Exception:  # noqa: BLE001 - its connection is long gone
            pass
    _UNFINISHED_ITERATORS.clear()


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _jsonable(row) -> list:
    return [value if isinstance(value, _JSON_SCALARS) else str(value) for value in row]


def _transaction_status() -> str:
    """The driver's view of the session: IDLE, INTRANS, INERROR, ..."""
    raw = connection.connection
    if raw is None:
        return "CLOSED"
    status = raw.info.transaction_status  # psycopg 3: an enum; psycopg2: an int
    if hasattr(status, "name"):
        return status.name
    return {0: "IDLE", 1: "ACTIVE", 2: "INTRANS", 3: "INERROR"}.get(status, "UNKNOWN")


def health(request):
    """Liveness for the test harness; never touches the database."""
    return HttpResponse("ok", content_type="text/plain")


def whoami(request):
    """Which worker process and thread answered, and what it runs. No database."""
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return JsonResponse(
        {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "thread": threading.get_ident(),
            "django": django.get_version(),
            "driver": "psycopg" if is_psycopg3 else "psycopg2",
            "djpool": "djpool" in sys.modules,
        }
    )


def pid(request):
    """The PostgreSQL backend pid of this request's connection."""
    return JsonResponse({"pid": _backend_pid()})


@csrf_exempt
def sql(request):
    """POST {"sql": [statements], "atomic": false}: run them on connection.cursor().

    Answers {"pid", "rows"} with the rows of the last statement that returned
    rows; with "atomic": true the statements run inside transaction.atomic().
    """
    body = json.loads(request.body or b"{}")
    statements = body.get("sql", [])
    if isinstance(statements, str):
        statements = [statements]
    backend_pid = None
    try:
        backend_pid = _backend_pid()
        rows = None
        with transaction.atomic() if body.get("atomic") else contextlib.nullcontext():
            with connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
                    if cursor.description is not None:
                        rows = [_jsonable(row) for row in cursor.fetchall()]
    except DjangoDatabaseError as error:
        cause = error.__cause__
        return JsonResponse(
            {
                "error": type(error).__name__,
                "driver_error": type(cause).__name__ if cause is not None else None,
                "message": str(error).strip(),
                "pid": backend_pid,
            },
            status=500,
        )
    return JsonResponse({"pid": backend_pid, "rows": rows})


def iterate(request):
    """Read one row of Item.objects.iterator(chunk_size=2) and return, leaving it unfinished.

    In autocommit mode Django declares the server-side cursor WITH HOLD, so it
    outlives the request on the server unless the connection is closed or reset.
    Answers {"pid", "first", "cursors": [[name, is_holdable], ...]} as seen
    by this connection before returning.
    """
    if Item.objects.count() < 3:
        Item.objects.bulk_create([Item(name=f"iterate-{n}", value=n) for n in range(3)])
    iterator = Item.objects.order_by("id").iterator(chunk_size=2)
    first = next(iterator)
    _UNFINISHED_ITERATORS.append(iterator)
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, is_holdable FROM pg_cursors ORDER BY name")
        cursors = [list(row) for row in cursor.fetchall()]
    return JsonResponse({"pid": _backend_pid(), "first": first.name, "cursors": cursors})


def raise_in_atomic(request):
    """INSERT an item (?name=, default "raised-in-atomic") in atomic(), then raise: HTTP 500."""
    name = request.GET.get("name", "raised-in-atomic")
    with transaction.atomic():
        Item.objects.create(name=name, value=-1)
        raise RuntimeError(f"raised inside transaction.atomic() after inserting {name!r}")


def aborted(request):
    """Leave the connection in an aborted transaction and answer 200.

    ?via=autocommit (default): transaction.set_autocommit(False), the way
    Django's API opens a transaction by hand; Django knows it is not in
    autocommit. ?via=begin: a raw BEGIN on the cursor; Django still believes
    the connection is in autocommit. Either way a failing statement (division
    by zero) is caught and the view returns without ROLLBACK. Answers
    {"pid", "via", "status"} with the driver's transaction status (INERROR).
    """
    via = request.GET.get("via", "autocommit")
    backend_pid = _backend_pid()
    if via == "autocommit":
        transaction.set_autocommit(False)
    elif via == "begin":
        with connection.cursor() as cursor:
            cursor.execute("BEGIN")
    else:
        return JsonResponse({"error": "via must be autocommit or begin"}, status=400)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")
    except DatabaseError:
        pass
    return JsonResponse({"pid": backend_pid, "via": via, "status": _transaction_status()})


def slow(request):
    """SELECT pg_sleep(ms / 1000) with ?ms=N (default 100); answers {"pid"}."""
    seconds = int(request.GET.get("ms", "100")) / 1000
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid() FROM pg_sleep(%s)", [seconds])
        return JsonResponse({"pid": cursor.fetchone()[0]})


def items(request):
    """One indexed query: the Item named ?name= (default item-1)."""
    item = Item.objects.filter(name=request.GET.get("name", "item-1")).first()
    return JsonResponse({"found": item is not None, "value": item.value if item else None})


def items3(request):
    """Three indexed queries in one transaction.atomic(): ?names=a,b,c (default item-1..3)."""
    names = request.GET.get("names", "item-1,item-2,item-3").split(",")
    with transaction.atomic():
        found = [Item.objects.filter(name=name).first() for name in names[:3]]
    return JsonResponse({"values": [item.value if item else None for item in found]})
