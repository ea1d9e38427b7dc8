"""A Celery app of the sample project (tests/test_celery.py): prefork children fork after Django.

It needs no broker server: kombu's filesystem transport keeps the queue in
files under APP_CELERY_DIR, and what happened goes to JSON lines there:

- ``parent.jsonl``: the worker's main process, at worker_init (after Django is
  set up and Celery's Django fixup ran) and at worker_shutdown. At worker_init
  it checks a pooled connection out and keeps it checked out while the pool
  forks its children, which must never use it; at shutdown it uses it again.
- ``tasks.jsonl``: one line per run of ``backend_pid``, from the child that ran it.

Nothing here is about djpool: Celery's Django fixup closes Django's
connection before and after each task, as in any Celery + Django project.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from celery import Celery, signals

DATA_DIR = Path(os.environ["APP_CELERY_DIR"])
# The transport expects its folders to exist.
for folder in ("queue", "processed", "control"):
    (DATA_DIR / folder).mkdir(exist_ok=True)

app = Celery("core")
app.conf.update(
    broker_url="filesystem://",
    broker_transport_options={
        "data_folder_in": str(DATA_DIR / "queue"),
        "data_folder_out": str(DATA_DIR / "queue"),
        "data_folder_processed": str(DATA_DIR / "processed"),
        # Where kombu keeps its broadcast exchanges (default: ./control, the app's dir).
        "control_folder": str(DATA_DIR / "control"),
        "polling_interval": 0.1,  # seconds between looks at the queue folder (default 1)
    },
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
)


def _record(name: str, **values: Any) -> None:
    """Append one JSON line (one write: lines of processes writing at once don't mix)."""
    line = json.dumps({"process": os.getpid(), **values}) + "\n"
    with open(DATA_DIR / name, "a", encoding="utf-8") as out:
        out.write(line)


def _backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def _pool_counters() -> dict[str, int]:
    """This process's djpool counters ({} when djpool is not loaded)."""
    try:
        from djpool import startup
    except ImportError:
        return {}
    registry = startup.registry()
    entries = registry.entries() if registry is not None else []
    if len(entries) != 1:
        return {"pools": len(entries)}
    counters = entries[0].counters
    return {"pools": 1, "connects": counters.connects, "checkouts": counters.checkouts}


@signals.worker_init.connect
def hold_a_connection_in_the_parent(**_: Any) -> None:
    """Check a connection out in the main process and keep it across the fork."""
    import django

    django.setup()
    _record(
        "parent.jsonl",
        event="init",
        backend=_backend_pid(),
        thread=threading.get_ident(),
        **_pool_counters(),
    )


@signals.worker_shutdown.connect
def use_the_connection_again_in_the_parent(**_: Any) -> None:
    """After the children ran: the parent's connection must still work."""
    try:
        _record("parent.jsonl", event="shutdown", backend=_backend_pid())
    except Exception as error:  # noqa: BLE001 - the test reads what went wrong
        _record("parent.jsonl", event="shutdown", error=repr(error))


@app.task
def backend_pid(number: int) -> None:
    """Run a query through Django's connection; Celery's Django fixup closes it at the end."""
    _record(
        "tasks.jsonl",
        number=number,
        parent=os.getppid(),
        backend=_backend_pid(),
        **_pool_counters(),
    )
