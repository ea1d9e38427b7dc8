"""The runtime shim and pool, driven from real Python processes of each stack.

Each test runs a short script in a stack's virtualenv with the shim on
PYTHONPATH, the way a dyno starts a process, against the suite's PostgreSQL
(TLS, scram-sha-256). Django's request cycle is reproduced with
``connection.close()``, which is what ``close_old_connections`` calls at the
end of a request when CONN_MAX_AGE is 0.

The tests over every stack run on RUNTIME_STACKS: the four of this machine's
Python plus the chroot stacks DJPOOL_TEST_STACKS selects (default
py314-dj61-psycopg3; ``all`` for Python 3.14 + Django 6.0 and Python 3.13
too; tests/support/stacks.py). The tests of one stack run on MAIN_STACKS:
the default stack and those chroot stacks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support import stacks
from support.stacks import DEFAULT_STACK, RUNTIME_STACKS
from support.waiting import wait_until

# The default stack, and each chroot stack selected (a newer Python, Django 6).
MAIN_STACKS = (DEFAULT_STACK, *stacks.extra_stacks())

PRELUDE = """
import json, os, sys, threading, time
import django
from django.conf import settings
import dj_database_url
db = dj_database_url.config(conn_max_age=int(os.environ.get("APP_CONN_MAX_AGE", "0")))
db["OPTIONS"].update(json.loads(os.environ.get("APP_OPTIONS", "{}")))
if os.environ.get("APP_ENGINE"):
    db["ENGINE"] = os.environ["APP_ENGINE"]
db["AUTOCOMMIT"] = os.environ.get("APP_AUTOCOMMIT", "1") == "1"
settings.configure(
    DATABASES={"default": db},
    USE_TZ=os.environ.get("APP_USE_TZ", "1") == "1",
    TIME_ZONE=os.environ.get("APP_TIME_ZONE", "UTC"),
)
django.setup()
from django.db import connection, transaction

def q(sql, params=None):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else None

def one(sql, params=None):
    return q(sql, params)[0][0]

def backend_pid():
    return one("SELECT pg_backend_pid()")

def end_request():
    connection.close()

def emit(**values):
    print("RESULT " + json.dumps(values, default=str), flush=True)
"""


def run_script(
    stack: str, body: str, env: dict[str, str], *, shim: bool = True, cwd=None
) -> stacks.Result:
    """Run PRELUDE + body in the stack's Python with the shim loaded like on a dyno."""
    return stacks.run_python(stack, PRELUDE + textwrap.dedent(body), env, shim=shim, cwd=cwd)


def run_in(python, code: str, env: dict[str, str], *, pythonpath=()) -> stacks.Result:
    """Run code in any interpreter (a path, or a command list), the shim first on PYTHONPATH."""
    command = [str(part) for part in python] if isinstance(python, list) else [str(python)]
    done = subprocess.run(
        [*command, "-c", code],
        env=stacks.stack_env(env, pythonpath=pythonpath),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return stacks.Result(done.returncode, done.stdout, done.stderr)


def other_python(stack: str) -> list[str]:
    """A Python beside the stack's that djpool was not installed for: the OS's python3.

    On this machine the test runner's base interpreter stands in for it (its
    venv has djpool's dependencies, for the unit tier); in a chroot stack's
    root filesystem it is the Debian python3.X there. Neither has SQLAlchemy
    or dj-database-url.
    """
    if stacks.chroot_of(stack) is None:
        return [
            str(
                Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
            )
        ]
    major, minor = stacks.python_version(stack)
    return stacks.chroot_command(stack, [f"/usr/bin/python{major}.{minor}"])


def results(proc: stacks.Result) -> dict:
    """Merge every RESULT line the script printed; fail with its output if it crashed."""
    assert proc.returncode == 0, f"script failed:\n{proc.stdout}\n{proc.stderr}"
    merged: dict = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            merged.update(json.loads(line[len("RESULT ") :]))
    return merged


def djpool_lines(proc: stacks.Result) -> list[str]:
    return proc.djpool_lines()


@pytest.fixture
def db_env(pg, appname):
    """DATABASE_URL for the app role over TLS, tagged with this test's application_name."""
    return {"DATABASE_URL": pg.url(sslmode="require", application_name=appname)}


# -- reuse -------------------------------------------------------------------

REUSE = """
pids = []
for _ in range(5):
    pids.append(backend_pid())
    end_request()
emit(pids=pids)
"""


@pytest.mark.parametrize("stack", RUNTIME_STACKS)
def test_connection_is_reused_across_requests(stack, pg, appname, db_env):
    proc = run_script(
        stack,
        """
from django.db.backends.signals import connection_created
from djpool import startup
created = []
connection_created.connect(lambda sender, connection, **kw: created.append(1), weak=False)
"""
        + REUSE
        + """
server = [r[0] for r in q(
    "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [os.environ["APP_NAME"]])]
counters = startup.registry().entries()[0].counters
emit(server=server, physical=counters.connects, checkouts=counters.checkouts,
     created=len(created))
""",
        {**db_env, "POOL_SIZE": "2", "APP_NAME": appname},
    )
    out = results(proc)
    assert len(set(out["pids"])) == 1, out
    # Django's per-connection setup ran once; its per-checkout part every time.
    assert out["physical"] == 1 and out["checkouts"] == 6
    assert out["created"] == 6
    # Between requests the connection stays open on the server: the one we
    # query from plus nothing else.
    assert out["server"] == [out["pids"][0]]
    assert any(line.startswith("djpool: pooling database 'app'") for line in djpool_lines(proc))


@pytest.mark.parametrize("stack", MAIN_STACKS)
def test_after_its_pools_are_disposed_a_database_gets_a_new_pool_that_is_reused(stack, pg, db_env):
    # The wrapper remembers its last pool; disposing (as before a test database
    # is dropped or cloned) must make it look again, not keep returning
    # connections to the disposed pool, which would close each of them.
    proc = run_script(
        stack,
        """
from djpool import startup
before = backend_pid()
end_request()
disposed = startup.registry().dispose_database(connection.settings_dict["NAME"])
after = [backend_pid()]
end_request()
after.append(backend_pid())
end_request()
entries = startup.registry().entries()
emit(before=before, after=after, disposed=disposed, pools=len(entries),
     connects=entries[0].counters.connects)
""",
        db_env,
    )
    out = results(proc)
    assert out["disposed"] == 1 and out["pools"] == 1, out
    assert out["after"][0] != out["before"], out
    assert out["after"][0] == out["after"][1] and out["connects"] == 1, out


@pytest.mark.parametrize("stack", MAIN_STACKS)
def test_without_the_shim_every_request_opens_a_new_connection(stack, pg, appname, db_env):
    out = results(run_script(stack, REUSE, db_env, shim=False))
    assert len(set(out["pids"])) == 5


@pytest.mark.parametrize("stack", MAIN_STACKS)
def test_start_line_names_database_and_sizes_but_never_the_password(stack, pg, appname, db_env):
    proc = run_script(
        stack, "backend_pid()", {**db_env, "POOL_SIZE": "3", "POOL_MAX_OVERFLOW": "2"}
    )
    lines = djpool_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "'app'" in lines[0] and "127.0.0.1" in lines[0]
    assert "POOL_SIZE=3" in lines[0] and "POOL_MAX_OVERFLOW=2" in lines[0]
    assert pg.password_of("app") not in proc.stderr + proc.stdout


# -- reset on checkin --------------------------------------------------------

# kind -> (statements that leave state behind, probe query returning True if state leaked)
LEAKS = {
    "set": (["SET work_mem = '7MB'"], "SELECT current_setting('work_mem') = '7MB'"),
    "set_config": (
        ["SELECT set_config('app.tenant', '42', false)"],
        "SELECT coalesce(current_setting('app.tenant', true), '') = '42'",
    ),
    "set_role": (["SET ROLE leak_role"], "SELECT current_user = 'leak_role'"),
    "session_authorization": (
        ["SET SESSION AUTHORIZATION leak_role"],
        "SELECT session_user = 'leak_role'",
    ),
    "temp_table": (
        ["CREATE TEMP TABLE leak_tmp (x int)"],
        "SELECT to_regclass('pg_temp.leak_tmp') IS NOT NULL",
    ),
    "prepared_statement": (
        ["PREPARE leak_stmt AS SELECT 1"],
        "SELECT count(*) > 0 FROM pg_prepared_statements",
    ),
    "listen": (["LISTEN leak_channel"], "SELECT count(*) > 0 FROM pg_listening_channels()"),
    "advisory_lock": (
        ["SELECT pg_advisory_lock(4242)"],
        "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    ),
    "with_hold_cursor": (
        ["DECLARE leak_cur CURSOR WITH HOLD FOR SELECT 1"],
        "SELECT count(*) > 0 FROM pg_cursors",
    ),
    "open_transaction": (
        ["BEGIN", "CREATE TABLE leak_in_tx (x int)"],
        "SELECT to_regclass('leak_in_tx') IS NOT NULL",
    ),
}

RESET = """
statements = json.loads(os.environ["LEAK"])
probe = os.environ["PROBE"]
first = backend_pid()
for statement in statements:
    q(statement)
leaked_in_first = one(probe)
end_request()
second = backend_pid()
emit(first=first, second=second, leaked_in_first=leaked_in_first, leaked=one(probe))
"""


@pytest.fixture(scope="session")
def leak_role(pg):
    pg.create_role("leak_role", "x-not-used", login=False)
    pg.query("GRANT leak_role TO app")
    return "leak_role"


@pytest.mark.parametrize("stack", RUNTIME_STACKS)
@pytest.mark.parametrize("kind", sorted(LEAKS))
def test_next_checkout_sees_none_of_the_previous_session_state(kind, stack, pg, db_env, leak_role):
    if kind == "session_authorization":
        # Only a superuser may change session authorization.
        db_env = {
            "DATABASE_URL": pg.url(
                user="postgres", password=pg.password_of("postgres"), sslmode="require"
            )
        }
    statements, probe = LEAKS[kind]
    out = results(
        run_script(
            stack,
            RESET,
            {**db_env, "POOL_SIZE": "1", "LEAK": json.dumps(statements), "PROBE": probe},
        )
    )
    assert out["leaked_in_first"] is True, "the probe must see the state it looks for"
    assert out["second"] == out["first"], "same physical connection"
    assert out["leaked"] is False


@pytest.mark.parametrize("stack", MAIN_STACKS)
def test_queryset_iterator_with_hold_cursor_is_closed_on_checkin(stack, pg, db_env):
    out = results(
        run_script(
            stack,
            """
q("CREATE TABLE IF NOT EXISTS iter_items (id serial primary key, name text)")
q("INSERT INTO iter_items (name) SELECT 'n' || g FROM generate_series(1, 10) g")
end_request()
first = backend_pid()
cursor = connection.chunked_cursor()   # what QuerySet.iterator() uses
cursor.execute("SELECT name FROM iter_items")
cursor.fetchmany(2)                    # leave it unexhausted, like a view that stops early
held = one("SELECT count(*) FROM pg_cursors WHERE is_holdable")
end_request()
emit(first=first, second=backend_pid(), held=held,
     after=one("SELECT count(*) FROM pg_cursors"))
""",
            {**db_env, "POOL_SIZE": "1"},
        )
    )
    assert out["held"] == 1
    assert out["second"] == out["first"]
    assert out["after"] == 0


@pytest.mark.parametrize("stack", MAIN_STACKS)
def test_a_connection_whose_reset_fails_is_discarded(stack, pg, db_env):
    out = results(
        run_script(
            stack,
            """
from django.db import connections
first = backend_pid()
# Kill our own session from another connection while it is checked out: the
# reset at checkin fails, so the connection must be thrown away, not reused.
other = connections.create_connection("default")
with other.cursor() as c:
    c.execute("SELECT pg_terminate_backend(%s)", [first])
other.close()
end_request()
emit(first=first, second=backend_pid())
""",
            {**db_env, "POOL_SIZE": "2"},
        )
    )
    assert out["second"] != out["first"]


# -- per-checkout state -------------------------------------------------------


@pytest.mark.parametrize("stack", RUNTIME_STACKS)
def test_isolation_level_time_zone_and_role_hold_on_every_checkout(stack, pg, db_env, leak_role):
    serializable = "3" if stack.endswith("psycopg2") else "4"  # the drivers number them apart
    out = results(
        run_script(
            stack,
            """
seen = []
for _ in range(3):
    with transaction.atomic():
        seen.append([backend_pid(), one("SHOW transaction_isolation"), one("SHOW TimeZone"),
                     one("SELECT current_user"), connection.get_autocommit()])
    q("SET TIME ZONE 'UTC'")   # a request that changes it must not affect the next one
    end_request()
emit(seen=seen)
""",
            {
                **db_env,
                "POOL_SIZE": "1",
                "APP_USE_TZ": "0",
                "APP_TIME_ZONE": "Asia/Tokyo",
                "APP_OPTIONS": json.dumps(
                    {"isolation_level": int(serializable), "assume_role": "leak_role"}
                ),
            },
        )
    )
    pids = {row[0] for row in out["seen"]}
    assert len(pids) == 1
    for _pid, isolation, zone, user, autocommit in out["seen"]:
        assert (isolation, zone, user, autocommit) == (
            "serializable",
            "Asia/Tokyo",
            "leak_role",
            False,
        )


@pytest.mark.parametrize("stack", [*MAIN_STACKS, "dj42-psycopg2"])
def test_time_zone_needs_no_statement_on_a_reused_connection(stack, pg, db_env):
    # The zone is the session default from the startup packet ('client'), so the
    # reset keeps it and Django's check at checkout finds nothing to SET.
    out = results(
        run_script(
            stack,
            """
seen = []
for _ in range(3):
    seen.append([backend_pid(), one("SHOW TimeZone"),
                 one("SELECT source FROM pg_settings WHERE name = 'TimeZone'")])
    end_request()
emit(seen=seen)
""",
            {**db_env, "POOL_SIZE": "1", "APP_USE_TZ": "0", "APP_TIME_ZONE": "America/New_York"},
        )
    )
    assert len({pid for pid, _, _ in out["seen"]}) == 1
    assert [row[1:] for row in out["seen"]] == [["America/New_York", "client"]] * 3


@pytest.mark.parametrize("stack", [*MAIN_STACKS, "dj42-psycopg2"])
@pytest.mark.parametrize("autocommit", ["1", "0"])
def test_a_reused_connection_starts_at_djangos_settings_after_a_request_changed_them(
    stack, pg, db_env, autocommit
):
    # On a reused connection djpool skips Django's per-checkout setup (the reset
    # left the session at its startup defaults); what that setup guarantees must hold.
    out = results(
        run_script(
            stack,
            """
seen = []
for _ in range(3):
    seen.append([backend_pid(), one("SHOW TimeZone"), connection.get_autocommit(),
                 connection.connection.autocommit, connection.connection.info.transaction_status])
    q("SET TIME ZONE 'UTC'")
    if not connection.get_autocommit():
        connection.commit()
    connection.connection.autocommit = not connection.connection.autocommit  # raw driver call
    end_request()
emit(seen=seen)
""",
            {
                **db_env,
                "POOL_SIZE": "1",
                "APP_USE_TZ": "0",
                "APP_TIME_ZONE": "Asia/Tokyo",
                "APP_AUTOCOMMIT": autocommit,
            },
        )
    )
    on = autocommit == "1"
    status = 0 if on else 2  # idle, or in the transaction the SELECT began (INTRANS)
    assert len({row[0] for row in out["seen"]}) == 1
    assert [row[1:] for row in out["seen"]] == [["Asia/Tokyo", on, on, status]] * 3


@pytest.mark.parametrize("stack", MAIN_STACKS)
def test_conn_max_age_is_treated_as_zero_with_one_warning(stack, pg, db_env):
    proc = run_script(stack, REUSE, {**db_env, "APP_CONN_MAX_AGE": "600"})
    out = results(proc)
    assert len(set(out["pids"])) == 1
    warnings = [line for line in djpool_lines(proc) if "CONN_MAX_AGE" in line]
    assert len(warnings) == 1 and "'default'" in warnings[0] and "600" in warnings[0]


# Django's own pool (OPTIONS["pool"]) is psycopg 3's psycopg_pool.
@pytest.mark.parametrize("stack", [s for s in MAIN_STACKS if s.endswith("psycopg3")])
def test_alias_with_djangos_own_pool_is_left_alone(stack, pg, db_env):
    proc = run_script(
        stack,
        """
from djpool import startup
pids = []
for _ in range(2):
    pids.append(backend_pid())
    end_request()
emit(pids=pids, our_pools=len(startup.registry().entries()))
""",
        {**db_env, "APP_OPTIONS": json.dumps({"pool": {"min_size": 1, "max_size": 2}})},
    )
    out = results(proc)
    assert out["our_pools"] == 0
    lines = [line for line in djpool_lines(proc) if "OPTIONS['pool']" in line]
    assert len(lines) == 1 and "'default'" in lines[0]


@pytest.mark.parametrize("stack", MAIN_STACKS)
def test_custom_engine_subclass_is_pooled(stack, pg, db_env, tmp_path):
    package = tmp_path / "mybackend"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "base.py").write_text(
        "from django.db.backends.postgresql import base\n"
        "class DatabaseWrapper(base.DatabaseWrapper):\n"
        "    pass\n"
    )
    out = results(
        run_script(
            stack,
            "sys.path.insert(0, os.environ['EXTRA'])\n" + REUSE,
            {**db_env, "APP_ENGINE": "mybackend", "EXTRA": str(tmp_path)},
            cwd=tmp_path,
        )
    )
    assert len(set(out["pids"])) == 1


SESSION_SETUP_BACKEND = """
from django.db.backends.postgresql import base

class DatabaseWrapper(base.DatabaseWrapper):
    # A backend that sets up each session itself, through Django's own hook.
    if hasattr(base.DatabaseWrapper, "_configure_connection"):  # Django 5.1+
        def _configure_connection(self, connection):
            super()._configure_connection(connection)
            with connection.cursor() as cursor:
                cursor.execute("SET statement_timeout = 12345")
            return True
    else:
        def ensure_role(self):
            super().ensure_role()
            with self.connection.cursor() as cursor:
                cursor.execute("SET statement_timeout = 12345")
            return True
"""


@pytest.mark.parametrize("stack", [*MAIN_STACKS, "dj42-psycopg2"])
def test_a_subclass_that_sets_up_sessions_itself_does_so_on_every_checkout(
    stack, pg, db_env, tmp_path
):
    package = tmp_path / "setupbackend"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "base.py").write_text(SESSION_SETUP_BACKEND)
    out = results(
        run_script(
            stack,
            """
sys.path.insert(0, os.environ['EXTRA'])
seen = []
for _ in range(3):
    seen.append([backend_pid(), one("SHOW statement_timeout")])
    end_request()
emit(seen=seen)
""",
            {**db_env, "POOL_SIZE": "1", "APP_ENGINE": "setupbackend", "EXTRA": str(tmp_path)},
            cwd=tmp_path,
        )
    )
    assert len({pid for pid, _ in out["seen"]}) == 1
    assert [timeout for _, timeout in out["seen"]] == ["12345ms"] * 3


# -- exhaustion --------------------------------------------------------------


@pytest.mark.parametrize("stack", [*MAIN_STACKS, "dj42-psycopg2"])
def test_exhausted_pool_raises_operational_error_after_timeout(stack, pg, db_env):
    out = results(
        run_script(
            stack,
            """
from django.db import utils
backend_pid()                      # this thread holds the only connection
outcome = {}
def other_request():
    from django.db import connection as theirs
    started = time.monotonic()
    try:
        with theirs.cursor() as c:
            c.execute("SELECT 1")
        outcome["error"] = None
    except utils.OperationalError as error:
        outcome["error"] = str(error)
    outcome["waited"] = time.monotonic() - started
worker = threading.Thread(target=other_request)
worker.start()
worker.join(30)
emit(alive=worker.is_alive(), **outcome)
end_request()
""",
            {**db_env, "POOL_SIZE": "1", "POOL_TIMEOUT": "0.5"},
        )
    )
    assert out["alive"] is False, "the waiting request must not hang"
    assert "exhausted" in out["error"] and "POOL_SIZE=1" in out["error"]
    assert out["waited"] >= 0.5


# -- bad configuration -------------------------------------------------------

BAD = [
    ({"POOL_SIZE": "abc"}, "POOL_SIZE='abc'", "whole number from 1 to 1000"),
    ({"POOL_SIZE": "0"}, "POOL_SIZE='0'", "whole number from 1 to 1000"),
    ({"POOL_SIZE": "-3"}, "POOL_SIZE='-3'", "whole number from 1 to 1000"),
    ({"POOL_MAX_OVERFLOW": "lots"}, "POOL_MAX_OVERFLOW='lots'", "whole number from 0"),
    ({"POOL_TIMEOUT": "soon"}, "POOL_TIMEOUT='soon'", "number of seconds"),
    ({"POOL_TIMEOUT": "0"}, "POOL_TIMEOUT='0'", "greater than 0"),
    ({"POOL_RECYCLE": "1h"}, "POOL_RECYCLE='1h'", "whole number"),
    ({"POOL_DISABLED": "maybe"}, "POOL_DISABLED='maybe'", "1/true/yes/on"),
]


@pytest.mark.parametrize(("env", "named", "allowed"), BAD, ids=[b[1] for b in BAD])
@pytest.mark.parametrize("stack", MAIN_STACKS)
def test_bad_pool_variable_gives_one_line_and_runs_unpooled(stack, env, named, allowed, pg, db_env):
    proc = run_script(stack, REUSE, {**db_env, **env})
    out = results(proc)
    lines = djpool_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert named in lines[0] and allowed in lines[0] and "running unpooled" in lines[0]
    assert len(set(out["pids"])) == 5, "unpooled: a new connection per request"


BAD_URLS = [
    ("not a url at all", "DATABASE_URL=<16 characters, not shown>"),
    (
        "mysql://someone:hunter2-secret@db.example.com:3306/shop",
        "DATABASE_URL='mysql://someone:***@db.example.com:3306/shop'",
    ),
    ("postgres://someone:hunter2-secret@db.example.com:notaport/shop", "DATABASE_URL=<"),
]


@pytest.mark.parametrize(("url", "shown"), BAD_URLS, ids=["not-url", "mysql", "bad-port"])
@pytest.mark.parametrize("stack", MAIN_STACKS)
def test_bad_database_url_gives_one_line_without_the_password(stack, url, shown):
    # The app would fail on such a URL by itself; the shim must not add a crash.
    # The URL is checked when Django's PostgreSQL backend is first imported.
    proc = stacks.run_python(
        stack,
        "import django.db.backends.postgresql.base; print('still running')",
        {"DATABASE_URL": url},
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "still running"
    lines = djpool_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert shown in lines[0] and "running unpooled" in lines[0]
    assert "hunter2" not in proc.stderr


@pytest.mark.parametrize("stack", MAIN_STACKS)
def test_pool_disabled_is_silent_and_unpooled(stack, pg, db_env):
    proc = run_script(stack, REUSE, {**db_env, "POOL_DISABLED": "true"})
    assert len(set(results(proc)["pids"])) == 5
    assert djpool_lines(proc) == []


# -- the shim ------------------------------------------------------------------


@pytest.mark.parametrize("stack", RUNTIME_STACKS)
def test_the_stack_runs_the_python_django_and_driver_its_name_says(stack, db_env):
    # The matrix in docs/compatibility.md is only true if the stacks are what
    # they are called; a chroot stack's process also keeps its pid (tests look
    # at worker and backend pids through /proc) and the caller's directory.
    code = (
        "import os, sys, django; from django.db.backends.postgresql import psycopg_any\n"
        "print(sys.version_info[0], sys.version_info[1], *django.VERSION[:2],"
        " 'psycopg3' if psycopg_any.is_psycopg3 else 'psycopg2', os.getpid(), os.getcwd())"
    )
    process = subprocess.Popen(
        [str(stacks.python_path(stack)), "-c", code],
        env=stacks.stack_env(db_env),
        cwd=stacks.APP_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    major, minor, dj_major, dj_minor, driver, pid, cwd = stdout.split()
    assert (int(major), int(minor)) == stacks.python_version(stack)
    assert f"dj{dj_major}{dj_minor}-{driver}" in stack
    assert int(pid) == process.pid
    assert cwd == str(stacks.APP_DIR)


@pytest.mark.parametrize("stack", MAIN_STACKS)
def test_shim_imports_neither_django_nor_sqlalchemy(stack, db_env):
    # Nor does it say anything yet: config, line and SQLAlchemy wait for Django's backend.
    imported = "print(sorted(m for m in ('django', 'sqlalchemy') if m in sys.modules))"
    proc = stacks.run_python(
        stack,
        f"import sys; {imported}; sys.stderr.write('--\\n'); sys.stderr.flush()\n"
        f"import django.db.backends.postgresql.base; {imported}",
        db_env,
    )
    assert proc.stdout.split("\n")[:2] == ["[]", "['django', 'sqlalchemy']"], proc.stderr
    before, _, after = proc.stderr.partition("--\n")
    assert "djpool" not in before
    assert len([line for line in after.splitlines() if line.startswith("djpool: ")]) == 1


@pytest.mark.parametrize("stack", MAIN_STACKS)
def test_another_interpreter_is_left_alone(stack, db_env):
    # The OS's python3 (see other_python): not the prefix djpool was installed for.
    proc = run_in(
        other_python(stack),
        "import sys; print('djpool' in sys.modules)",
        {**db_env, "DJPOOL_PYTHON_PREFIX": str(stacks.venv_dir(stack))},
    )
    assert proc.returncode == 0
    assert proc.stdout.strip() == "False"
    assert djpool_lines(proc) == []


@pytest.mark.parametrize("stack", MAIN_STACKS)
def test_another_interpreter_is_left_alone_even_with_pythonhome(stack, db_env, tmp_path):
    # heroku/python exports PYTHONHOME, which gives every interpreter started on
    # the dyno the app's sys.prefix. Stand-in for the app's installation: a
    # prefix whose standard library is the OS python's; that base interpreter
    # then plays the OS's python3 (it lives elsewhere). In a chroot stack the
    # symlink and the interpreter are the chroot's, under the same /tmp.
    if stacks.chroot_of(stack) is None:
        major, minor = sys.version_info[:2]
        base_prefix = Path(sys.base_prefix)
        base_python: list[str] | Path = base_prefix / "bin" / f"python{major}.{minor}"
    else:
        major, minor = stacks.python_version(stack)
        base_prefix = Path("/usr")
        base_python = other_python(stack)
    version = f"python{major}.{minor}"
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / version).symlink_to(base_prefix / "lib" / version)
    proc = run_in(
        base_python,
        "import os, sys; print(os.path.realpath(sys.prefix) == os.environ['APP_P'],"
        " 'djpool' in sys.modules)",
        {
            **db_env,
            "PYTHONHOME": str(tmp_path),
            "DJPOOL_PYTHON_PREFIX": str(tmp_path),
            "APP_P": os.path.realpath(tmp_path),
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False"]
    assert djpool_lines(proc) == []


@pytest.mark.parametrize("stack", MAIN_STACKS)
def test_the_apps_own_sitecustomize_still_runs(stack, pg, db_env, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(
        "import os\nos.environ['APP_SITECUSTOMIZE_RAN'] = 'yes'\n"
    )
    proc = run_in(
        stacks.python_path(stack),
        PRELUDE + REUSE + "emit(ran=os.environ.get('APP_SITECUSTOMIZE_RAN'))",
        db_env,
        pythonpath=[tmp_path],
    )
    out = results(proc)
    assert out["ran"] == "yes"
    assert len(set(out["pids"])) == 1


@pytest.mark.parametrize("stack", MAIN_STACKS)
def test_a_broken_sitecustomize_of_the_app_does_not_stop_pooling(stack, pg, db_env, tmp_path):
    (tmp_path / "sitecustomize.py").write_text("raise RuntimeError('app bug')\n")
    proc = run_in(stacks.python_path(stack), PRELUDE + REUSE, db_env, pythonpath=[tmp_path])
    assert len(set(results(proc)["pids"])) == 1
    assert "Error in sitecustomize" in proc.stderr and "app bug" in proc.stderr


@pytest.mark.parametrize("stack", MAIN_STACKS)
def test_missing_dependencies_mean_one_line_and_unpooled(stack, db_env, tmp_path):
    # The OS's python3 (see other_python) has neither SQLAlchemy nor dj-database-url,
    # nor Django: djpool looks for them when Django's PostgreSQL backend is imported,
    # so an empty module of that name stands in for it (in a chroot stack the
    # interpreter sees the same /tmp).
    backend = tmp_path / "django" / "db" / "backends" / "postgresql"
    backend.mkdir(parents=True)
    for folder in (backend, *backend.parents):
        if folder == tmp_path:
            break
        (folder / "__init__.py").write_text("")
    (backend / "base.py").write_text("")
    proc = run_in(
        other_python(stack),
        "import django.db.backends.postgresql.base; print('ok')",
        db_env,
        pythonpath=[tmp_path],
    )
    assert proc.stdout.strip() == "ok", proc.stderr
    assert djpool_lines(proc) == [
        "djpool: SQLAlchemy and dj-database-url are not installed; running unpooled"
    ]


# -- fork safety -------------------------------------------------------------


@pytest.mark.parametrize("stack", RUNTIME_STACKS)
def test_forked_child_never_uses_the_parents_connections(stack, pg, db_env):
    out = results(
        run_script(
            stack,
            """
idle = backend_pid()
end_request()                 # one idle in the pool ...
held = backend_pid()          # ... and one checked out at fork time (POOL_SIZE=2)
read, write = os.pipe()
child = os.fork()
if child == 0:
    os.close(read)
    pids = []
    for _ in range(3):
        pids.append(backend_pid())
        end_request()
    os.write(write, json.dumps(pids).encode())
    sys.exit(0)               # normal exit: interpreter teardown frees what it inherited
os.close(write)
child_pids = json.loads(os.read(read, 1000))
os.waitpid(child, 0)
after = backend_pid()         # the parent's checked-out connection still works
end_request()
emit(idle=idle, held=held, child=child_pids, after=after, again=backend_pid())
""",
            {**db_env, "POOL_SIZE": "2"},
        )
    )
    parent_pids = {out["idle"], out["held"]}
    assert not parent_pids & set(out["child"])
    assert len(set(out["child"])) == 1, "the child pools its own connections"
    assert out["after"] == out["held"]
    assert out["again"] in parent_pids


# A module, not the script: spawn and forkserver children import the function
# they run by name, and re-import the module that defines it (the script of
# ``python -c`` cannot be). Importing it sets Django up, as a worker's code does.
MP_WORKER = (
    PRELUDE
    + """
from djpool import startup

def work(appname):
    pids = []
    for _ in range(3):               # three requests in this child
        pids.append(backend_pid())
        end_request()
    held = backend_pid()             # checked out: the server shows it under our name
    seen = [row[0] for row in q(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [appname])]
    end_request()
    entries = startup.registry().entries()
    return {"process": os.getpid(), "pids": pids, "held": held, "seen": seen,
            "pools": len(entries), "connects": entries[0].counters.connects}
"""
)

MP_PARENT = """
import multiprocessing, os, sys
sys.path.insert(0, os.environ["APP_WORKER_DIR"])
import djpool_mp_worker as worker
appname = os.environ["APP_NAME"]
parent = worker.backend_pid()       # checked out while the children start and work
method = os.environ["APP_START_METHOD"]
context = multiprocessing.get_context(None if method == "default" else method)
with context.Pool(2) as children:
    done = children.map(worker.work, [appname] * 4, chunksize=1)
after = worker.backend_pid()
worker.end_request()
worker.emit(method=context.get_start_method(), process=os.getpid(), parent=parent,
            children=done, after=after)
"""


@pytest.mark.parametrize("stack", MAIN_STACKS)
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn", "default"])
def test_multiprocessing_children_get_a_working_pool_of_their_own(
    method, stack, pg, appname, db_env, tmp_path
):
    # Python 3.14 made forkserver the default start method on Linux: a child
    # then starts from a fresh interpreter (spawn) or from a clean server
    # process (forkserver), not from a copy of the parent. Each way, the child
    # must load the shim itself, pool its own connections, and never touch
    # the parent's.
    (tmp_path / "djpool_mp_worker.py").write_text(MP_WORKER)
    out = results(
        stacks.run_python(
            stack,
            MP_PARENT,
            {
                **db_env,
                "POOL_SIZE": "2",
                "APP_WORKER_DIR": str(tmp_path),
                "APP_NAME": appname,
                "APP_START_METHOD": method,
            },
            timeout=120,
        )
    )
    if method == "default":
        expected = "forkserver" if stacks.python_version(stack) >= (3, 14) else "fork"
        assert out["method"] == expected
    assert out["after"] == out["parent"], "the parent's connection survives the children"
    by_process: dict[int, set[int]] = {}
    for child in out["children"]:
        assert child["process"] != out["process"]
        assert child["pools"] == 1 and child["connects"] == 1, child  # pooled, in the child
        assert set(child["pids"]) == {child["held"]}, child  # one connection, reused
        assert child["held"] in child["seen"], child  # a live backend of this test
        assert child["held"] != out["parent"], child
        by_process.setdefault(child["process"], set()).add(child["held"])
    assert all(len(held) == 1 for held in by_process.values()), by_process
    backends = [next(iter(held)) for held in by_process.values()]
    assert len(set(backends)) == len(backends), "each child has its own connection"


@pytest.mark.parametrize("stack", MAIN_STACKS)
def test_threads_share_the_pool_within_its_size(stack, pg, appname, db_env):
    out = results(
        run_script(
            stack,
            """
from concurrent.futures import ThreadPoolExecutor
def request(_):
    pid = one("SELECT pg_backend_pid() FROM pg_sleep(0.01)")
    end_request()
    return pid
with ThreadPoolExecutor(8) as threads:
    pids = list(threads.map(request, range(80)))
emit(pids=sorted(set(pids)))
""",
            {**db_env, "POOL_SIZE": "3"},
        )
    )
    assert 1 <= len(out["pids"]) <= 3


# -- gunicorn --preload ----------------------------------------------------------


@pytest.mark.parametrize("stack", MAIN_STACKS)
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_gunicorn_preload_workers_pool_their_own_connections(
    worker_class, stack, pg, appname, start_app
):
    # --preload loads the app, and so djpool, in the master before it forks the
    # workers: each worker must build its own pool and never use the master's.
    app = start_app(
        stack, {"POOL_SIZE": "2"}, worker_class=worker_class, workers=2, threads=2, preload=True
    )
    assert len(app.djpool_lines()) == 1, app.djpool_lines()  # the master loaded it once
    with ThreadPoolExecutor(6) as clients:
        answers = list(clients.map(lambda _: app.get("/pid/"), range(40)))
    assert [status for status, _ in answers] == [200] * 40, answers
    bound = 2 * 2  # workers x POOL_SIZE
    assert 1 <= len({body["pid"] for _, body in answers}) <= bound
    assert pg.connections_opened(application_name=appname) <= bound
    backends = wait_until(
        lambda: (lambda found: found if found and all(b.state == "idle" for b in found) else None)(
            pg.backends(application_name=appname)
        ),
        message="every backend idle in a pool after the requests",
    )
    assert len(backends) <= bound
    assert "Traceback" not in app.log_text()
