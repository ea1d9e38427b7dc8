"""Views the transaction-pooler tests (tests/test_pgbouncer.py) add to views.py.

Each one does what breaks, or must not break, behind PgBouncer in transaction
mode, where every transaction may run on a different server connection:

- /pooler/iterate/ reads every Item through ``QuerySet.iterator()`` in small
  chunks: with server-side cursors the cursor is declared in one transaction
  and fetched from in the next ones, which may land on another server
  connection ("cursor ... does not exist").
- /pooler/increment/ is a read-modify-write of one row in ``transaction.atomic()``
  with ``select_for_update()``: correct only if the whole block runs on one
  server connection holding the row lock.
- /pooler/session/ says what the session looks like: the time zone Django
  set, whether Django uses server-side cursors for the alias, and after how
  many executions psycopg 3 prepares a statement (None: never).

A database error is answered like /sql/: HTTP 500 with {"error",
"driver_error", "message"}, so the test can say what failed.
"""

from __future__ import annotations

import time

from django.db import Error as DjangoDatabaseError
from django.db import connection, transaction
from django.http import JsonResponse

from core.models import Item

HOLD_LIMIT_MS = 1000


def _database_error(error: DjangoDatabaseError) -> JsonResponse:
    cause = error.__cause__
    return JsonResponse(
        {
            "error": type(error).__name__,
            "driver_error": type(cause).__name__ if cause is not None else None,
            "message": str(error).strip(),
        },
        status=500,
    )


def iterate(request):
    """Items named ?prefix= (default "item-") through ``iterator(chunk_size=?chunk)``
    (default 5): {"count", "sum"} of their values."""
    chunk = int(request.GET.get("chunk", "5"))
    items = Item.objects.filter(name__startswith=request.GET.get("prefix", "item-"))
    try:
        count = total = 0
        for item in items.order_by("id").iterator(chunk_size=chunk):
            count += 1
            total += item.value
    except DjangoDatabaseError as error:
        return _database_error(error)
    return JsonResponse({"count": count, "sum": total})


def increment(request):
    """Add 1 to the value of the Item ?name= (one must exist) under a row lock: {"value"}.

    The value is read, changed in Python and written back, with ?hold_ms=
    (default 5) spent between the read and the write: without the lock (or
    with the statements on different server connections) concurrent requests
    would lose updates.
    """
    name = request.GET["name"]
    hold = min(int(request.GET.get("hold_ms", "5")), HOLD_LIMIT_MS) / 1000
    try:
        with transaction.atomic():
            item = Item.objects.select_for_update().get(name=name)
            value = item.value + 1
            time.sleep(hold)  # the app "working" while it holds the row
            item.value = value
            item.save(update_fields=["value"])
    except DjangoDatabaseError as error:
        return _database_error(error)
    return JsonResponse({"value": value})


def session(request):
    """{"time_zone", "server_side_cursors", "prepare_threshold"} of this request's connection.

    prepare_threshold is the driver connection's (psycopg 3; None for psycopg2,
    which never prepares).
    """
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('TimeZone')")
            zone = cursor.fetchone()[0]
    except DjangoDatabaseError as error:
        return _database_error(error)
    return JsonResponse(
        {
            "time_zone": zone,
            "server_side_cursors": not connection.settings_dict.get(
                "DISABLE_SERVER_SIDE_CURSORS", False
            ),
            "prepare_threshold": getattr(connection.connection, "prepare_threshold", None),
        }
    )
