"""Compatibility: an app's own ``manage.py test``, and every kind of web worker, with the shim on.

``manage.py test``: the sample app's tests (tests/app/core/tests.py) run as a
developer runs them, the shim loaded as on a dyno. Django makes test_app, the
tests run on it through the pool (each test writes down the database and the
backend pid it saw), and Django drops it without PostgreSQL's "is being
accessed by other users"; also with ``--parallel 2`` (cloned databases, forked
workers) and ``--keepdb`` twice (also with ``--parallel 2``).

Worker types: gunicorn's sync, gthread and gevent workers (gevent with
psycopg 3 as it is, and with psycopg2 patched by psycogreen in a post_fork
hook, as users do) and uvicorn's ASGI worker serving async views. Each gets
50 requests from 8 threads and must answer them all while the server sees
no more logins than workers x POOL_SIZE, then show its connections idle in
the pool with nothing left checked out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support import stacks
from support.appserver import AppServer, AppServers
from support.concurrency import start_in_thread, summary
from support.logs import script_results
from support.postgres import PostgresServer
from support.waiting import wait_until

APP_TEST_DATABASE = "test_app"  # Django's name for the test database of NAME "app"
IN_USE = "is being accessed by other users"
SHIM_LINE = "djpool: pooling "
PSYCOGREEN_CONFIG = stacks.APP_DIR / "gunicorn_psycogreen.conf.py"


# -- manage.py test ------------------------------------------------------------------------


def leftover_test_databases(pg: PostgresServer) -> list[str]:
    rows = pg.query(
        "SELECT datname FROM pg_database WHERE datname LIKE 'test\\_app%%' ORDER BY datname"
    )
    return [row[0] for row in rows]


@pytest.fixture
def clean_test_databases(pg: PostgresServer) -> Iterator[None]:
    """No test_app* database before or after the test (a failed run may leave one)."""

    def drop_all() -> None:
        for name in leftover_test_databases(pg):
            pg.query(f'DROP DATABASE "{name}" WITH (FORCE)')

    drop_all()
    yield
    drop_all()


def manage_test(
    stack: str, database_url: str, record: Path, *args: str, shim: bool = True
) -> tuple[stacks.Result, list[dict]]:
    """``manage.py test core`` in the sample app; what it printed and what each test saw."""
    record.unlink(missing_ok=True)
    result = stacks.run_manage(
        stack,
        "test",
        "core",
        "--noinput",
        "-v",
        "2",
        *args,
        env={"DATABASE_URL": database_url, "APP_TEST_RECORD": str(record)},
        shim=shim,
        timeout=300,
    )
    stacks.check(result, f"manage.py test {' '.join(args)}")
    lines = record.read_text().splitlines() if record.exists() else []
    return result, [json.loads(line) for line in lines]


def assert_ran_on(records: list[dict], names: set[str]) -> None:
    assert len(records) == 6, records  # every test of tests/app/core/tests.py wrote one line
    for seen in records:
        assert seen["settings_name"] in names, seen
        assert seen["datname"] == seen["settings_name"], seen


def reconnect(records: list[dict]) -> dict:
    [seen] = [r for r in records if r["test"].endswith("test_close_and_query_again")]
    return seen


def wait_no_backends(pg: PostgresServer, appname: str) -> None:
    wait_until(
        lambda: not pg.backends(application_name=appname),
        message=f"backends of {appname} still connected after the process ended",
    )


@pytest.mark.parametrize("stack", stacks.STACKS)
def test_manage_py_test_runs_on_a_pooled_test_database_and_drops_it(
    stack, pg, database_url, appname, tmp_path, clean_test_databases
):
    result, records = manage_test(stack, database_url, tmp_path / "record.jsonl")
    assert SHIM_LINE in result.stderr
    assert "Creating test database for alias 'default'" in result.stderr
    assert_ran_on(records, {APP_TEST_DATABASE})
    # connection.close() then a query: the pool hands the same server session back.
    seen = reconnect(records)
    assert seen["backend_pid_after_close"] == seen["backend_pid_before_close"]
    assert IN_USE not in result.stdout + result.stderr
    assert "Destroying test database for alias 'default'" in result.stderr
    assert leftover_test_databases(pg) == []
    wait_no_backends(pg, appname)


def test_without_the_shim_a_closed_connection_is_a_new_backend(
    pg, database_url, appname, tmp_path, clean_test_databases
):
    """The control for the test above: unpooled, close() really ends the server session."""
    result, records = manage_test(
        stacks.DEFAULT_STACK, database_url, tmp_path / "record.jsonl", shim=False
    )
    assert SHIM_LINE not in result.stderr
    assert_ran_on(records, {APP_TEST_DATABASE})
    seen = reconnect(records)
    assert seen["backend_pid_after_close"] != seen["backend_pid_before_close"]


@pytest.mark.parametrize("stack", stacks.STACKS)
def test_manage_py_test_parallel_clones_and_drops_every_database(
    stack, pg, database_url, appname, tmp_path, clean_test_databases
):
    result, records = manage_test(stack, database_url, tmp_path / "record.jsonl", "--parallel", "2")
    assert SHIM_LINE in result.stderr
    assert "Cloning test database for alias 'default'" in result.stderr
    clones = {f"{APP_TEST_DATABASE}_1", f"{APP_TEST_DATABASE}_2"}
    assert_ran_on(records, clones)
    seen = reconnect(records)
    assert seen["backend_pid_after_close"] == seen["backend_pid_before_close"]
    assert IN_USE not in result.stdout + result.stderr
    assert leftover_test_databases(pg) == []
    wait_no_backends(pg, appname)


KEEPDB_RUNS = {
    # name: (arguments, the databases kept, the ones the tests run on)
    "keepdb": (("--keepdb",), [APP_TEST_DATABASE], {APP_TEST_DATABASE}),
    "keepdb-parallel": (
        ("--keepdb", "--parallel", "2"),
        [APP_TEST_DATABASE, f"{APP_TEST_DATABASE}_1", f"{APP_TEST_DATABASE}_2"],
        {f"{APP_TEST_DATABASE}_1", f"{APP_TEST_DATABASE}_2"},
    ),
}


@pytest.mark.parametrize("stack", [stacks.DEFAULT_STACK, "dj42-psycopg2"])
@pytest.mark.parametrize("run", sorted(KEEPDB_RUNS))
def test_manage_py_test_keepdb_twice_reuses_the_kept_databases(
    run, stack, pg, database_url, appname, tmp_path, clean_test_databases
):
    args, kept, ran_on = KEEPDB_RUNS[run]
    # With --keepdb Django says "Using existing" either way: the first run makes them.
    assert leftover_test_databases(pg) == []
    first, records = manage_test(stack, database_url, tmp_path / "record.jsonl", *args)
    assert "Preserving test database for alias 'default'" in first.stderr
    assert_ran_on(records, ran_on)
    assert leftover_test_databases(pg) == kept
    second, records = manage_test(stack, database_url, tmp_path / "record.jsonl", *args)
    assert "Using existing test database for alias 'default'" in second.stderr
    assert "Preserving test database for alias 'default'" in second.stderr
    assert_ran_on(records, ran_on)
    seen = reconnect(records)
    assert seen["backend_pid_after_close"] == seen["backend_pid_before_close"]
    assert IN_USE not in first.stdout + first.stderr + second.stdout + second.stderr
    assert leftover_test_databases(pg) == kept
    wait_no_backends(pg, appname)


# -- Django's connection contract, where Django's own suite does not look -----------------

DJANGO_SCRIPT = """
import json, os
import django
from django.conf import settings
import dj_database_url
settings.configure(DATABASES={"default": dj_database_url.config()})
django.setup()
from django.db import Error, connection, transaction

def emit(**values):
    print("RESULT " + json.dumps(values))
"""

CLOSE_IN_ATOMIC = (
    DJANGO_SCRIPT
    + """
table = os.environ["APP_TABLE"]
with connection.cursor() as cursor:
    cursor.execute(f"CREATE TABLE {table} (name text)")
refused = None
try:
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} VALUES ('first')")
        connection.close()  # as close_old_connections() inside a transaction does
        with connection.cursor() as cursor:  # must fail: the transaction is gone
            cursor.execute(f"INSERT INTO {table} VALUES ('second')")
except Error as error:
    refused = type(error).__name__
connection.close()
with connection.cursor() as cursor:
    cursor.execute(f"SELECT name FROM {table}")
    committed = [row[0] for row in cursor.fetchall()]
    cursor.execute(f"DROP TABLE {table}")
emit(refused=refused, committed=committed)
"""
)

ISOLATION_LEVEL_OF_ANOTHER_CHECKOUT = (
    DJANGO_SCRIPT
    + """
from django.db.backends.postgresql.psycopg_any import IsolationLevel
strict = connection.copy()  # the same alias with other OPTIONS: override_settings, a copy
strict.settings_dict["OPTIONS"]["isolation_level"] = IsolationLevel.SERIALIZABLE
with strict.cursor() as cursor:
    cursor.execute("SELECT 1")
strict.close()
with transaction.atomic(), connection.cursor() as cursor:  # no OPTIONS: READ COMMITTED
    cursor.execute("SHOW transaction_isolation")
    emit(level=cursor.fetchone()[0], django=connection.isolation_level.name)
"""
)


INVALID_ISOLATION_LEVEL_ON_A_REUSED_CONNECTION = (
    DJANGO_SCRIPT
    + """
from django.core.exceptions import ImproperlyConfigured
with connection.cursor() as cursor:
    cursor.execute("SELECT 1")
connection.close()  # the pool's one connection now waits in it
bad = connection.copy()
bad.settings_dict["OPTIONS"]["isolation_level"] = -1
try:
    bad.ensure_connection()
except ImproperlyConfigured as error:
    kept = error  # as a logger, an error tracker or a test runner keeps it
try:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    emit(raised=type(kept).__name__, next_checkout="ok")
except Error as error:
    emit(raised=type(kept).__name__, next_checkout=str(error))
"""
)


IS_USABLE_AFTER_CLOSE = (
    DJANGO_SCRIPT
    + """
with connection.cursor() as cursor:
    cursor.execute("SELECT 1")
connection._close()  # what a dropped connection looks like to Django (its test #21553)
try:
    emit(is_usable=connection.is_usable())
except Exception as error:
    emit(is_usable=type(error).__name__)
"""
)


def run_django(stack: str, script: str, env: dict[str, str]) -> dict:
    result = stacks.check(stacks.run_python(stack, script, env), "the Django script")
    assert SHIM_LINE in result.stderr
    return script_results(result.stdout)


@pytest.mark.parametrize("stack", stacks.STACKS)
def test_a_close_inside_atomic_fails_the_block_and_commits_nothing(
    stack, pg, database_url, appname
):
    table = "compat_" + appname.replace(".", "_").replace("-", "_")[-40:]
    found = run_django(
        stack, CLOSE_IN_ATOMIC, {"DATABASE_URL": database_url, "APP_TABLE": f'"{table}"'}
    )
    assert found["refused"] is not None  # Django refuses the query after the close
    assert found["committed"] == []  # and nothing of the block is committed


@pytest.mark.parametrize("stack", stacks.STACKS)
def test_an_isolation_level_set_for_one_checkout_does_not_stay_on_the_connection(
    stack, pg, database_url
):
    found = run_django(
        stack, ISOLATION_LEVEL_OF_ANOTHER_CHECKOUT, {"DATABASE_URL": database_url, "POOL_SIZE": "1"}
    )
    assert (found["level"], found["django"]) == ("read committed", "READ_COMMITTED")


def test_a_checkout_that_fails_on_bad_options_gives_the_connection_back(pg, database_url):
    found = run_django(
        stacks.DEFAULT_STACK,
        INVALID_ISOLATION_LEVEL_ON_A_REUSED_CONNECTION,
        {"DATABASE_URL": database_url, "POOL_SIZE": "1", "POOL_TIMEOUT": "2"},
    )
    assert found == {"raised": "ImproperlyConfigured", "next_checkout": "ok"}


@pytest.mark.parametrize("stack", stacks.STACKS)
def test_is_usable_says_false_after_the_connection_was_closed(stack, pg, database_url):
    found = run_django(stack, IS_USABLE_AFTER_CLOSE, {"DATABASE_URL": database_url})
    assert found == {"is_usable": False}


# -- worker types ------------------------------------------------------------------------

WORKERS = 2
POOL_SIZE = 3
REQUESTS = 50
CLIENT_THREADS = 8


class AsgiAppServer(AppServer):
    """The sample app through Django's ASGI handler (testproj.asgi), e.g. in uvicorn's worker."""

    def command(self) -> list[str]:
        args = super().command()
        args[args.index("testproj.wsgi")] = "testproj.asgi:application"
        return args


# name: (venv, gunicorn --worker-class, more gunicorn arguments, ASGI, paths loaded)
SYNC_PATHS = ("/pid/", "/items/?name=item-7", "/slow/?ms=20", "/items3/")
ASYNC_PATHS = ("/async/items/?name=item-7", "/async/items/?ms=20", "/pid/", "/items3/")
WORKER_TYPES: dict[str, tuple[str, str, tuple[str, ...], bool, tuple[str, ...]]] = {
    "sync-psycopg3": ("dj52-psycopg3", "sync", (), False, SYNC_PATHS),
    "sync-psycopg2": ("dj52-psycopg2", "sync", (), False, SYNC_PATHS),
    "gthread-psycopg3": ("dj52-psycopg3", "gthread", (), False, SYNC_PATHS),
    "gthread-psycopg2": ("dj52-psycopg2", "gthread", (), False, SYNC_PATHS),
    "gevent-psycopg3": ("workers-dj52-psycopg3", "gevent", (), False, SYNC_PATHS),
    "gevent-psycopg2-psycogreen": (
        "workers-dj52-psycopg2",
        "gevent",
        ("--config", str(PSYCOGREEN_CONFIG)),
        False,
        SYNC_PATHS,
    ),
    "uvicorn-asgi-psycopg3": (
        "workers-dj52-psycopg3",
        "uvicorn_worker.UvicornWorker",
        (),
        True,
        ASYNC_PATHS,
    ),
    "uvicorn-asgi-psycopg2": (
        "workers-dj52-psycopg2",
        "uvicorn_worker.UvicornWorker",
        (),
        True,
        ASYNC_PATHS,
    ),
}


@pytest.fixture
def serve(request, pg, migrated, database_url, tmp_path) -> Iterator[Callable[[str], AppServer]]:
    """``serve(worker_type)``: the app on that worker type, stopped after the test."""
    servers = AppServers(request.node)  # conftest adds their logs to a failure

    def start(kind: str) -> AppServer:
        venv, worker_class, extra_args, asgi, _paths = WORKER_TYPES[kind]
        server_class = AsgiAppServer if asgi else AppServer
        return servers.start(
            server_class(
                venv,
                {"DATABASE_URL": database_url, "POOL_SIZE": str(POOL_SIZE)},
                worker_class=worker_class,
                workers=WORKERS,
                threads=4,
                extra_args=extra_args,
                log_dir=tmp_path,
            )
        )

    yield start
    servers.stop_all()


def checked_out_by_worker(app: AppServer) -> dict[int, int]:
    """Connections each worker has checked out, from its /pool/ (no database use).

    Asked until every worker has answered with nothing checked out, or 30 s:
    a response reaches the client before the worker's request_finished gives
    the connection back, so a count may lag for a moment; a leaked checkout never
    goes back and fails the wait.
    """
    latest: dict[int, int] = {}
    workers = set(app.worker_pids())

    def ask() -> bool:
        status, body = app.get("/pool/")
        assert status == 200, body
        assert body["pools"] is not None, f"worker {body['pid']} runs unpooled"
        latest[body["pid"]] = sum(shown["checkedout"] for shown in body["pools"])
        return workers <= set(latest) and not any(latest.values())

    wait_until(
        ask,
        timeout=30,
        interval=0.01,
        message=lambda: f"/pool/ of the workers {sorted(workers)}: checked out {latest}",
    )
    return latest


@pytest.mark.parametrize("kind", sorted(WORKER_TYPES))
def test_worker_type_serves_concurrent_requests_through_the_pool(kind, serve, pg, appname):
    app = serve(kind)
    worker_class = WORKER_TYPES[kind][1]
    assert f"Using worker: {worker_class}" in app.log_text()
    assert any(line.startswith(SHIM_LINE) for line in app.djpool_lines())
    paths = WORKER_TYPES[kind][4]

    with ThreadPoolExecutor(CLIENT_THREADS) as clients:
        answers = list(clients.map(lambda n: app.get(paths[n % len(paths)]), range(REQUESTS)))

    assert [status for status, _ in answers] == [200] * REQUESTS, answers
    pids = {body["pid"] for _, body in answers if "pid" in body}
    bound = WORKERS * POOL_SIZE
    assert 1 <= len(pids) <= bound
    # Pooling: the server saw at most workers x POOL_SIZE logins for 50 requests.
    assert pg.connections_opened(application_name=appname) <= bound
    # Returned: every connection waits idle in a pool, none is left in a transaction
    # or checked out.
    backends = wait_until(
        lambda: (lambda found: found if all(b.state == "idle" for b in found) else None)(
            pg.backends(application_name=appname)
        ),
        message="every backend idle after the load",
    )
    assert 1 <= len(backends) <= bound
    assert set(checked_out_by_worker(app)) == set(app.worker_pids())
    assert not [line for line in app.log_text().splitlines() if "Traceback" in line]


@pytest.mark.parametrize("kind", sorted(k for k in WORKER_TYPES if not k.startswith("sync")))
def test_worker_type_runs_database_work_concurrently_within_a_worker(kind, serve, pg, appname):
    """Three slow queries at once, although two workers: some worker overlaps them.

    gthread does so with threads, gevent with greenlets (psycopg2 only once
    psycogreen made it cooperative), uvicorn with a thread per request.
    """
    app = serve(kind)
    slow = "/async/items/?ms=3000" if WORKER_TYPES[kind][3] else "/slow/?ms=3000"
    requests = [start_in_thread(lambda: app.get(slow)) for _ in range(2 * POOL_SIZE)]
    try:
        sleeping = wait_until(
            lambda: (lambda found: found if len(found) > WORKERS else None)(
                [
                    b
                    for b in pg.backends(application_name=appname)
                    if b.state == "active" and "pg_sleep" in b.query
                ]
            ),
            timeout=20,
            interval=0.05,
            message="more slow queries running at once than there are workers",
        )
    finally:
        for thread, _outcome in requests:
            thread.join(60)
    assert len(sleeping) <= WORKERS * POOL_SIZE
    answers = [outcome for _thread, got in requests for outcome in got]
    assert [o.status for o in answers] == [200] * len(requests), summary(answers)
