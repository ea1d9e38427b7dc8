"""Celery's prefork pool with djpool: children forked from a worker that already pooled.

A real ``celery worker --pool prefork`` (tests/app/core/celery_app.py) runs
with the shim, as a Heroku worker dyno runs it. Its main process sets Django
up and checks a pooled connection out before it forks its children (the
parent keeps it checked out all along). The children run the tasks through
Django's connection, which Celery's Django fixup closes after each task.
Every child must pool its own connection and reuse it, never the parent's;
the parent's connection must still work after the children ran. No broker
server: kombu's filesystem transport, in the test's temporary directory.

On this machine's Python 3.11 (Django 5.2) and on Python 3.14 (Django 6.1,
the forky chroot: tests/setup_chroots.sh), where multiprocessing's default
start method is no longer fork but Celery's pool (billiard) still forks.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from support import procs, stacks
from support.waiting import wait_until

CELERY_STACKS = ("celery-dj52-psycopg3", "celery-py314-dj61-psycopg3")
CHILDREN = 2
POOL_SIZE = 1
TASKS = 20
# What a child that used the parent's TLS session (or ended it) makes one side print.
TLS_ERRORS = ("ssl error", "decryption failed", "bad record mac", "ssl syscall error")

SEND = """
from core.celery_app import backend_pid
for number in range({tasks}):
    backend_pid.delay(number)
"""


def read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("stack", CELERY_STACKS)
def test_prefork_children_pool_their_own_connections_never_the_parents(
    stack, pg, appname, database_url, tmp_path
):
    data = tmp_path / "celery"
    data.mkdir()
    env = {
        "DATABASE_URL": database_url,
        "POOL_SIZE": str(POOL_SIZE),
        "APP_CELERY_DIR": str(data),
    }
    log_path = tmp_path / "worker.log"
    command = [
        str(stacks.bin_path(stack, "celery")),
        "--app",
        "core.celery_app",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(CHILDREN),
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            command,
            env=stacks.stack_env(env, app=True),
            cwd=stacks.APP_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops the children
        )

    def worker_log() -> str:
        return log_path.read_text(errors="replace")

    try:
        parent = wait_until(
            lambda: read_lines(data / "parent.jsonl") or worker.poll() is not None,
            timeout=120,
            message=lambda: f"the worker set Django up and queried; its log:\n{worker_log()}",
        )
        assert isinstance(parent, list), f"the worker ended:\n{worker_log()}"
        stacks.check(
            stacks.run_python(stack, SEND.format(tasks=TASKS), env, app=True, cwd=stacks.APP_DIR),
            "sending the tasks",
        )
        done = wait_until(
            lambda: (lambda found: found if len(found) >= TASKS else None)(
                read_lines(data / "tasks.jsonl")
            ),
            timeout=120,
            message=lambda: f"{TASKS} tasks ran; the worker log:\n{worker_log()}",
        )
        live = {backend.pid for backend in pg.backends(application_name=appname)}
    finally:
        status = procs.stop_group(worker, timeout=60)

    (init,) = [line for line in read_lines(data / "parent.jsonl") if line["event"] == "init"]
    shutdowns = [line for line in read_lines(data / "parent.jsonl") if line["event"] == "shutdown"]
    main_process, parent_backend = init["process"], init["backend"]
    assert init["pools"] == 1 and init["connects"] == 1, init  # the parent pooled, before forking

    assert sorted(task["number"] for task in done) == list(range(TASKS)), done
    by_child: dict[int, list[dict]] = {}
    for task in done:
        assert task["parent"] == main_process, task  # forked by the worker's main process
        assert task["process"] != main_process, task
        assert task["backend"] != parent_backend, task  # never the parent's connection
        by_child.setdefault(task["process"], []).append(task)
    assert 1 <= len(by_child) <= CHILDREN, by_child
    for child, tasks in by_child.items():
        # One pool of its own, one connection in it, opened once and checked
        # out again for every task: the fixup checked it in after each one.
        assert {task["backend"] for task in tasks} == {tasks[0]["backend"]}, (child, tasks)
        assert all(task["pools"] == 1 and task["connects"] == 1 for task in tasks), tasks
        checkouts = [task["checkouts"] for task in tasks]
        assert checkouts == list(range(checkouts[0], checkouts[0] + len(tasks))), tasks
    backends = {task["backend"] for task in done}
    assert len(backends) <= CHILDREN * POOL_SIZE
    assert {parent_backend, *backends} <= live, "every pooled connection is still open"
    # Logins: the parent's one, and one per child that ran tasks.
    assert pg.connections_opened(application_name=appname) == 1 + len(by_child)

    assert status == 0, f"the worker's exit status: {status}\n{worker_log()}"
    assert shutdowns == [
        {"process": main_process, "event": "shutdown", "backend": parent_backend}
    ], "the parent's connection still works after the children ran"
    text = worker_log()
    assert "Traceback" not in text and "ERROR/" not in text, text
    for error in TLS_ERRORS:
        assert error not in text.lower(), text
    assert len(stacks.Result(0, "", text).djpool_lines()) == 1, text  # loaded once, in the parent
    # The broker's files all stayed in the test's directory, none in the app's.
    assert not (stacks.APP_DIR / "control").exists()
