"""Async views of the sample app, served through testproj.asgi (uvicorn's gunicorn worker).

They reach the database the two ways an async Django app does: the async ORM
methods of Django 4.1+ (``afirst``, ``acount``, ``acreate``), and
``sync_to_async`` around ordinary code. Under ASGI both run in the request's
own thread, on the request's connection, which Django closes when the
request ends.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.db import connection, transaction
from django.http import JsonResponse

from core.models import Item


def _sleep_and_pid(seconds: float) -> int:
    """SELECT pg_sleep() inside a transaction; the backend pid of this request's connection."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid() FROM pg_sleep(%s)", [seconds])
        return cursor.fetchone()[0]


async def items(request):
    """The Item named ?name= (default item-1) and how many there are, via the async ORM.

    ?ms=N also holds the connection N ms in a pg_sleep (through sync_to_async).
    Answers {"found", "value", "count", "pid"}.
    """
    item = await Item.objects.filter(name=request.GET.get("name", "item-1")).afirst()
    count = await Item.objects.acount()
    seconds = int(request.GET.get("ms", "0")) / 1000
    backend_pid = await sync_to_async(_sleep_and_pid)(seconds)
    return JsonResponse(
        {
            "found": item is not None,
            "value": item.value if item else None,
            "count": count,
            "pid": backend_pid,
        }
    )
