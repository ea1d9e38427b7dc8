"""See the pool: l2met lines, event lines, OpenTelemetry instruments and ``djpool doctor``.

Against the suite's PostgreSQL (TLS, scram-sha-256) and real gunicorn: the
lines a process writes are read from its log and compared with the load the
test drove; the OpenTelemetry instruments are read with the SDK's in-memory
reader in an app process that has the SDK; ``python -m djpool doctor`` is run
the way ``heroku run`` runs it against a server with max_connections=20.
"""

from __future__ import annotations

import re
import secrets
import shlex
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import stacks
from support.appserver import AppServer
from support.concurrency import Load, in_parallel, start_in_thread, summary
from support.logs import script_results
from support.pgbouncer import PgBouncer
from support.postgres import PostgresServer
from support.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
# The dj52-psycopg3 stack plus opentelemetry-api and -sdk (tests/requirements/).
OTEL_VENV = REPO / ".venv" / "stacks" / "otel-dj52-psycopg3"
REQUEST_TIMEOUT = 30

# A metrics line: djpool: source=S [pid=N] alias=A sample#djpool.x=1 count#djpool.y=2 ...
METRICS_LINE = re.compile(
    r"^djpool: source=(?P<source>\S+)(?: pid=(?P<pid>\d+))? alias=(?P<alias>\S+)"
    r"(?P<fields>(?: (?:sample|count)#djpool\.[a-z0-9_]+=[0-9.]+)+)$"
)
FIELDS_IN_ORDER = [
    "sample#djpool.size",
    "sample#djpool.checked_out",
    "sample#djpool.idle",
    "sample#djpool.waiting",
    "count#djpool.checkouts",
    "count#djpool.connects",
    "count#djpool.timeouts",
    "count#djpool.invalidated",
    "sample#djpool.wait_p95_ms",
    "sample#djpool.wait_max_ms",
]


def metric_lines(text: str) -> list[dict[str, Any]]:
    """The l2met lines in ``text``, parsed: source, pid, alias and every field by name.

    A ``djpool: source=`` line that does not parse fails the test: the format is fixed.
    """
    parsed = []
    for line in text.splitlines():
        if not line.startswith("djpool: source="):
            continue
        match = METRICS_LINE.match(line)
        assert match, f"not an l2met line of the documented form: {line!r}"
        fields = dict(item.split("=") for item in match["fields"].split())
        assert list(fields) == FIELDS_IN_ORDER, line
        values: dict[str, Any] = {name: float(value) for name, value in fields.items()}
        values.update(source=match["source"], pid=match["pid"], alias=match["alias"])
        parsed.append(values)
    return parsed


def event_lines(text: str, kind: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"djpool: event={kind} ")]


def checked_out(app: AppServer) -> int:
    """Connections checked out of the worker's pool now (0 before its first pool)."""
    pools = app.get("/pool/")[1]["pools"]
    return sum(pool["checkedout"] for pool in pools)


def total(lines: list[dict[str, Any]], field: str) -> int:
    return int(sum(line[field] for line in lines))


# -- the l2met lines -------------------------------------------------------------------------


def test_lines_every_interval_add_up_to_the_load_driven(start_app):
    started = time.monotonic()
    app = start_app(env={"POOL_SIZE": "3", "POOL_METRICS_INTERVAL": "1"}, workers=1, threads=4)
    [worker] = app.worker_pids()
    requests = 0
    for _ in range(10):
        batch = in_parallel([lambda: app.get("/items/", timeout=REQUEST_TIMEOUT)] * 4)
        assert all(outcome.ok for outcome in batch), summary(batch)
        requests += len(batch)

    def reported() -> list[dict[str, Any]] | None:
        lines = metric_lines(app.log_text())
        return lines if total(lines, "count#djpool.checkouts") >= requests else None

    lines = wait_until(reported, timeout=30, message="metrics lines counting every request")
    elapsed = time.monotonic() - started
    # One checkout per request (each /items/ runs one query), all of them counted.
    assert total(lines, "count#djpool.checkouts") >= requests
    assert 1 <= total(lines, "count#djpool.connects") <= 3
    assert total(lines, "count#djpool.timeouts") == 0
    for line in lines:
        assert line["source"] == f"pid{worker}" and line["pid"] is None, line
        assert line["alias"] == "default" and line["sample#djpool.size"] == 3, line
        assert line["sample#djpool.checked_out"] <= 3 and line["sample#djpool.idle"] <= 3, line
        assert line["sample#djpool.wait_max_ms"] >= line["sample#djpool.wait_p95_ms"] >= 0, line
    # At most one line a second (no drift into a busy loop, no second reporter).
    assert len(lines) <= elapsed + 1, (len(lines), elapsed)
    # Other djpool lines: the start-up line, nothing else (no warnings, no events).
    others = [
        line
        for line in app.djpool_lines()
        if not line.startswith("djpool: source=") and not line.startswith("djpool: pooling")
    ]
    assert others == [], others


def test_a_held_connection_is_reported_while_nothing_is_counted(start_app, tmp_path):
    app = start_app(env={"POOL_SIZE": "2", "POOL_METRICS_INTERVAL": "1"}, workers=1, threads=4)
    release = tmp_path / "release"
    thread, outcome = start_in_thread(
        lambda: app.get(f"/pause-in-atomic/?name=held&release={release}", timeout=90)
    )
    try:

        def held_and_quiet() -> bool:
            return any(
                line["sample#djpool.checked_out"] == 1 and line["count#djpool.checkouts"] == 0
                for line in metric_lines(app.log_text())
            )

        wait_until(held_and_quiet, timeout=30, message="a line with checked_out=1 and no counts")
    finally:
        release.touch()
        thread.join(timeout=60)
    assert outcome and outcome[0].ok, outcome


def test_an_exhausted_pool_counts_timeouts_and_says_so_once(start_app, tmp_path):
    app = start_app(
        env={"POOL_SIZE": "1", "POOL_TIMEOUT": "1", "POOL_METRICS_INTERVAL": "1"},
        workers=1,
        threads=8,
    )
    release = tmp_path / "release"
    holder, held = start_in_thread(
        lambda: app.get(f"/pause-in-atomic/?name=exhaust&release={release}", timeout=90)
    )
    try:
        wait_until(lambda: checked_out(app) == 1, timeout=30, message="the holder's checkout")
        burst = in_parallel([lambda: app.get("/items/", timeout=REQUEST_TIMEOUT)] * 3)
    finally:
        release.touch()
        holder.join(timeout=60)
    assert held and held[0].ok, held
    assert [outcome.status for outcome in burst] == [500] * 3, summary(burst)

    def timeouts_reported() -> list[dict[str, Any]] | None:
        lines = metric_lines(app.log_text())
        return lines if total(lines, "count#djpool.timeouts") >= 3 else None

    lines = wait_until(timeouts_reported, timeout=30, message="3 timeouts in the metrics lines")
    assert total(lines, "count#djpool.timeouts") == 3
    assert all(line["sample#djpool.checked_out"] <= 1 for line in lines), lines
    events = event_lines(app.log_text(), "pool_exhausted")
    assert len(events) == 1, events  # three timeouts in a second: one line a minute
    event = dict(field.split("=", 1) for field in shlex.split(events[0])[1:])
    assert event["alias"] == "default" and event["size"] == "1" and event["max_overflow"] == "0"
    assert event["checked_out"] == "1" and event["idle"] == "0", event
    # The holder had its connection for at least the POOL_TIMEOUT the checkout waited.
    assert float(event["oldest_checkout_s"]) >= 1.0, event
    assert event["desc"] == (
        "all 1 connections are in use and none came back within POOL_TIMEOUT=1s"
    ), event


def test_a_connection_the_server_closed_is_one_event_line_a_minute(start_app, pg, appname):
    app = start_app(env={"POOL_SIZE": "1"}, workers=1, threads=2)
    killed = []
    for _ in range(3):
        status, body = app.get("/pid/", timeout=REQUEST_TIMEOUT)
        assert status == 200, body
        wait_until(lambda: checked_out(app) == 0, timeout=30, message="the connection back")
        killed += pg.terminate_backends(application_name=appname)
        wait_until(lambda: not pg.backends(application_name=appname), timeout=30)
    status, body = app.get("/pid/", timeout=REQUEST_TIMEOUT)
    assert status == 200 and body["pid"] not in killed, body
    assert len(killed) == 3, killed  # found dead at the next three checkouts: one line
    [worker] = app.worker_pids()
    events = event_lines(app.log_text(), "server_closed_connection")
    assert events == [
        f"djpool: event=server_closed_connection source=pid{worker} alias=default "
        'desc="a pooled connection was closed by the server; replaced at checkout"'
    ], events


def test_each_forked_worker_reports_on_its_own(start_app):
    app = start_app(
        env={"POOL_SIZE": "2", "POOL_METRICS_INTERVAL": "1", "DYNO": "web.1"},
        workers=2,
        threads=2,
        preload=True,
    )
    workers = set(app.worker_pids())
    assert len(workers) == 2
    started = time.monotonic()
    with Load(lambda: app.get("/items/", timeout=REQUEST_TIMEOUT), clients=4) as load:

        def both_report() -> set[str] | None:
            pids = {line["pid"] for line in metric_lines(app.log_text())}
            return pids if pids >= {str(pid) for pid in workers} else None

        pids = wait_until(both_report, timeout=60, message="lines from both workers")
    assert all(outcome.ok for outcome in load.outcomes()), summary(load.outcomes())
    elapsed = time.monotonic() - started
    lines = metric_lines(app.log_text())
    assert pids == {str(pid) for pid in workers}, (pids, workers)  # never the master
    for pid in pids:
        own = [line for line in lines if line["pid"] == pid]
        assert all(line["source"] == "web.1" for line in own), own
        # One reporter per worker: at most a line a second each (started after the fork).
        assert len(own) <= elapsed + 1, (pid, len(own), elapsed)


FORK = """
import threading
from djpool import metrics

def reporters():
    return [t for t in threading.enumerate() if t.name == metrics.THREAD_NAME]

def reported(checkouts):
    # Poll this process's reporter until it has written a line counting them.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        previous = metrics._reporter._previous
        if any(stats["checkouts"] >= checkouts for stats in previous.values()):
            return True
        time.sleep(0.05)
    return False

for _ in range(3):
    backend_pid()
    end_request()
parent_reporters = len(reporters())
child = os.fork()
if child == 0:
    after_fork = len(reporters())
    for _ in range(5):
        backend_pid()
        end_request()
    emit(child=os.getpid(), after_fork=after_fork, child_reporters=len(reporters()),
         child_reported=reported(5))
    os._exit(0)
os.waitpid(child, 0)
emit(parent=os.getpid(), parent_reporters=parent_reporters, parent_reported=reported(3),
     parent_after=len(reporters()))
"""


def test_a_forked_child_gets_a_reporter_of_its_own_and_the_parent_keeps_one(pg, appname):
    from test_runtime import PRELUDE

    env = {
        "DATABASE_URL": pg.url(sslmode="require", application_name=appname),
        "POOL_METRICS_INTERVAL": "1",
    }
    result = stacks.run_python(stacks.DEFAULT_STACK, PRELUDE + textwrap.dedent(FORK), env)
    out = script_results(result.stdout)
    assert result.returncode == 0 and "child_reported" in out, result
    assert out["parent_reporters"] == 1 and out["parent_after"] == 1, out
    assert out["after_fork"] == 0 and out["child_reporters"] == 1, out
    assert out["child_reported"] and out["parent_reported"], out
    lines = metric_lines(result.stderr)
    child = [line for line in lines if line["source"] == f"pid{out['child']}"]
    parent = [line for line in lines if line["source"] == f"pid{out['parent']}"]
    # The child counts its own checkouts only: the parent's pool stayed with the parent.
    assert total(child, "count#djpool.checkouts") == 5, child
    assert total(parent, "count#djpool.checkouts") == 3, parent


def test_a_process_that_never_opens_a_pool_writes_no_line(pg, appname):
    env = {
        "DATABASE_URL": pg.url(sslmode="require", application_name=appname),
        "POOL_METRICS_INTERVAL": "1",
    }
    code = (
        "import threading, django\n"
        "from django.conf import settings\n"
        "settings.configure()\n"
        "django.setup()\n"
        "import django.db.backends.postgresql.base\n"  # patched, but no pool opened
        "print(sorted(t.name for t in threading.enumerate()))\n"
    )
    result = stacks.check(stacks.run_python(stacks.DEFAULT_STACK, code, env))
    # The reporter starts with the first pool: no thread, so no line, ever.
    assert "djpool-metrics" not in result.stdout and "MainThread" in result.stdout, result.stdout
    assert [line for line in result.djpool_lines() if "source=" in line] == []


# -- bad POOL_METRICS_INTERVAL -----------------------------------------------------------------


@pytest.mark.parametrize("value", ["soon", "-1", "1.5", "86401"])
def test_a_bad_interval_is_one_line_and_the_process_runs_unpooled(pg, appname, value):
    from test_runtime import PRELUDE

    env = {
        "DATABASE_URL": pg.url(sslmode="require", application_name=appname),
        "POOL_METRICS_INTERVAL": value,
    }
    body = "pids = [backend_pid()]\nend_request()\npids.append(backend_pid())\nemit(pids=pids)\n"
    result = stacks.run_python(stacks.DEFAULT_STACK, PRELUDE + body, env)
    out = script_results(result.stdout)
    assert result.returncode == 0, result
    assert result.djpool_lines() == [
        f"djpool: POOL_METRICS_INTERVAL={value!r} is not valid: expected a whole number "
        "from 0 to 86400; running unpooled"
    ]
    assert out["pids"][0] != out["pids"][1], out  # unpooled: a new connection per request


def build_check(env_dir: Path) -> subprocess.CompletedProcess[str]:
    """lib/config.sh's config::check_pool_vars, as bin/compile runs it on ENV_DIR."""
    script = (
        "set -euo pipefail; source lib/output.sh; source lib/failure.sh; source lib/config.sh; "
        'failure::setup; config::check_pool_vars "$1" "$2" "$3"'
    )
    python = stacks.python_path(stacks.DEFAULT_STACK)
    return subprocess.run(
        ["bash", "-c", script, "check", str(python), str(env_dir), str(REPO / "lib")],
        cwd=REPO,
        env=stacks.stack_env(shim=False),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bad_interval_fails_the_build_check(tmp_path):
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    (env_dir / "POOL_METRICS_INTERVAL").write_text("soon")
    done = build_check(env_dir)
    assert done.returncode == 1, done
    assert " !     Error: a djpool config var is not valid." in done.stderr
    assert (
        " !     POOL_METRICS_INTERVAL='soon' is not valid: expected a whole number from 0 to 86400"
        in done.stderr
    ), done.stderr
    (env_dir / "POOL_METRICS_INTERVAL").write_text("0")
    done = build_check(env_dir)
    assert done.returncode == 0 and "not valid" not in done.stdout + done.stderr, done


# -- OpenTelemetry -------------------------------------------------------------------------------

OTEL = (
    """
from opentelemetry import metrics as otel_api
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

reader = InMemoryMetricReader()
otel_api.set_meter_provider(MeterProvider(metric_readers=[reader]))
"""
    + "{prelude}"
    + """
def points():
    found = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != "djpool":
                continue
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    found.setdefault(metric.name, []).append({
                        "attributes": dict(point.attributes),
                        "value": getattr(point, "value", None),
                        "count": getattr(point, "count", None),
                        "unit": metric.unit,
                    })
    return found

for _ in range(5):
    backend_pid()
    end_request()
backend_pid()  # held: this thread's connection is checked out now
errors = []

def other_thread():
    from django.db import connection as other
    try:
        other.ensure_connection()
    except Exception as error:
        errors.append(type(error).__name__)
    finally:
        other.close()

thread = threading.Thread(target=other_thread)
thread.start()
thread.join()
emit(held=points(), errors=errors)
end_request()
backend_pid()
end_request()
emit(later=points())
"""
)


def otel_python() -> Path:
    python = OTEL_VENV / "bin" / "python"
    assert python.exists(), (
        f"{python} is missing: tests/requirements/otel-dj52-psycopg3.txt is the venv's list; "
        "run `bash tests/setup_env.sh`"
    )
    return python


def by_state(points: list[dict[str, Any]]) -> dict[str, Any]:
    return {point["attributes"]["db.client.connection.state"]: point["value"] for point in points}


def test_opentelemetry_instruments_report_the_pool(pg, appname):
    from test_runtime import PRELUDE

    env = {
        "DATABASE_URL": pg.url(sslmode="require", application_name=appname),
        "POOL_SIZE": "1",
        "POOL_TIMEOUT": "0.5",
    }
    code = textwrap.dedent(OTEL).replace("{prelude}", PRELUDE)
    done = subprocess.run(
        [str(otel_python()), "-c", code],
        env=stacks.stack_env(env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done
    out = script_results(done.stdout)
    assert out["errors"] == ["OperationalError"], out  # the second thread timed out
    held = out["held"]
    pool_name = {"db.client.connection.pool.name": "default"}
    assert by_state(held["db.client.connection.count"]) == {"used": 1, "idle": 0}, held
    for point in held["db.client.connection.count"]:
        assert point["attributes"]["db.client.connection.pool.name"] == "default"
        assert point["unit"] == "{connection}"
    assert held["db.client.connection.max"] == [
        {"attributes": pool_name, "value": 1, "count": None, "unit": "{connection}"}
    ]
    assert [p["value"] for p in held["db.client.connection.pending_requests"]] == [0]
    assert [p["value"] for p in held["db.client.connection.timeouts"]] == [1]
    [waits] = held["db.client.connection.wait_time"]
    assert waits["attributes"] == pool_name and waits["unit"] == "s"
    assert waits["count"] == 6, waits  # 5 checkouts given back, 1 held; the timeout got none
    later = out["later"]
    assert by_state(later["db.client.connection.count"]) == {"used": 0, "idle": 1}, later
    assert later["db.client.connection.wait_time"][0]["count"] == 7, later  # cumulative


def test_without_opentelemetry_nothing_of_it_is_imported(pg, appname):
    from test_runtime import PRELUDE

    env = {"DATABASE_URL": pg.url(sslmode="require", application_name=appname)}
    body = (
        "backend_pid()\nend_request()\n"
        "import djpool\n"
        "emit(pools=len(djpool.stats()), "
        "otel=sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry'))\n"
    )
    result = stacks.run_python(stacks.DEFAULT_STACK, PRELUDE + body, env)
    assert result.returncode == 0, result
    out = script_results(result.stdout)
    assert out == {"pools": 1, "otel": []}, out
    # This stack really has no OpenTelemetry (or the test would prove nothing).
    probe = stacks.run_python(
        stacks.DEFAULT_STACK,
        "import importlib.util as u; print(u.find_spec('opentelemetry'))",
        shim=False,
    )
    assert probe.stdout.strip() == "None", probe


# -- python -m djpool doctor -------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_pg() -> Iterator[PostgresServer]:
    """A server of this module's own with max_connections=20 (3 reserved for superusers)."""
    with PostgresServer(max_connections=20) as server:
        server.create_role("app", secrets.token_urlsafe(18), createdb=True)
        server.create_database("app", owner="app")
        yield server


def doctor(env: dict[str, str], *args: str, app: bool = False) -> stacks.Result:
    """``python -m djpool doctor ARGS`` as ``heroku run`` starts it: the shim loaded."""
    return stacks.run(stacks.DEFAULT_STACK, ["-m", "djpool", "doctor", *args], env, app=app)


@pytest.fixture
def doctor_env(small_pg: PostgresServer) -> dict[str, str]:
    return {
        "DATABASE_URL": small_pg.url(sslmode="require"),
        "POOL_SIZE": "5",
        "WEB_CONCURRENCY": "2",
    }


def assert_no_password(server: PostgresServer, result: stacks.Result) -> None:
    assert server.password_of("app") not in result.stdout + result.stderr


def test_doctor_reports_the_server_and_a_formation_that_fits(small_pg, doctor_env):
    result = doctor(doctor_env)
    assert result.returncode == 0, result
    out = result.stdout
    assert "POOL_SIZE=5 POOL_MAX_OVERFLOW=0" in out and "WEB_CONCURRENCY=2" in out, out
    assert "connects through DATABASE_URL: database 'app' on 127.0.0.1:" in out, out
    assert re.search(r"PostgreSQL \d+\.\d+.*, this connection: TLS TLSv1\.[23]", out), out
    assert "max_connections=20 (superuser_reserved_connections=3" in out, out
    assert "role 'app' may open 17 connections" in out, out
    assert "each web dyno: WEB_CONCURRENCY 2 x 5 = 10" in out, out
    assert "fits: at most 10 of the 17 connections" in out, out
    assert "up to 1 web dyno fit" in out, out
    assert_no_password(small_pg, result)


def test_doctor_says_a_formation_does_not_fit_and_which_pool_size_would(small_pg, doctor_env):
    result = doctor(doctor_env, "--dynos", "3")
    assert result.returncode == 1, result
    out = result.stdout
    assert " !     Error: does not fit: the formation may open 30 connections; " in out, out
    assert "role 'app' may open 17." in out, out
    assert " !     With these settings 1 web dyno fit." in out, out
    assert " !     To run this formation: heroku config:set POOL_SIZE=2" in out, out  # 6 x 2 = 12


def test_doctor_counts_worker_dynos(small_pg, doctor_env):
    env = {**doctor_env, "POOL_SIZE": "2", "POOL_MAX_OVERFLOW": "1"}
    fits = doctor(env, "--dynos", "1", "--worker-dynos", "1", "--worker-concurrency", "3")
    assert fits.returncode == 0, fits  # 1 x 2 x 3 + 1 x 3 x 3 = 15 <= 17
    assert "formation: 1 web dyno x 6 + 1 worker dyno x 3 processes x 3 = 15" in fits.stdout
    not_fits = doctor(env, "--dynos", "2", "--worker-dynos", "1", "--worker-concurrency", "3")
    assert not_fits.returncode == 1, not_fits  # 21 > 17; 7 processes x 2 = 14
    assert "heroku config:set POOL_SIZE=1 (with POOL_MAX_OVERFLOW=1)" in not_fits.stdout


def test_doctor_points_to_connection_pooling_when_no_pool_size_fits(small_pg, doctor_env):
    result = doctor({**doctor_env, "POOL_SIZE": "1"}, "--dynos", "10")  # 20 processes
    assert result.returncode == 1, result
    assert "No POOL_SIZE fits 20 processes in 17 connections" in result.stdout, result.stdout
    assert "heroku pg:connection-pooling:attach DATABASE_URL" in result.stdout


def test_doctor_connects_through_django_settings_with_their_tls_and_sees_who_is_connected(
    small_pg,
):
    url = small_pg.url(sslmode="verify-full", sslrootcert=str(small_pg.ca_cert_path))
    holders = [small_pg.connect(application_name="holder-of-two") for _ in range(2)]
    try:
        result = doctor({"DATABASE_URL": url, "WEB_CONCURRENCY": "3"}, "--dynos", "1", app=True)
    finally:
        for connection in holders:
            connection.close()
    assert result.returncode == 0, result
    out = result.stdout
    assert (
        "connects through Django's settings (DJANGO_SETTINGS_MODULE=testproj.settings, "
        "alias 'default'): database 'app' on 127.0.0.1:" in out
    ), out
    assert "this connection: TLS TLSv1." in out, out
    assert re.search(r"in use now, besides this one: \d+ \(.*2 holder-of-two", out), out
    assert "each web dyno: WEB_CONCURRENCY 3 x 5 = 15" in out, out  # POOL_SIZE's default
    assert_no_password(small_pg, result)


def test_doctor_cannot_connect_names_the_cause_never_the_password(small_pg):
    wrong = small_pg.url(password="not-the-password-" + secrets.token_hex(4), sslmode="require")
    result = doctor({"DATABASE_URL": wrong})
    assert result.returncode == 2, result
    assert " !     Error: cannot connect: OperationalError: " in result.stdout, result
    assert 'password authentication failed for user "app"' in result.stdout, result.stdout
    assert wrong.split(":")[2].split("@")[0] not in result.stdout + result.stderr
    closed = small_pg.url(port=_closed_port(), sslmode="require")
    refused = doctor({"DATABASE_URL": closed})
    assert refused.returncode == 2 and "Connection refused" in refused.stdout, refused
    assert_no_password(small_pg, refused)


def test_doctor_runs_where_the_pool_does_not_load(small_pg, doctor_env):
    disabled = doctor({**doctor_env, "POOL_DISABLED": "1"})
    assert disabled.returncode == 0, disabled
    assert "POOL_SIZE=5 POOL_MAX_OVERFLOW=0" in disabled.stdout, disabled.stdout
    assert "(POOL_DISABLED: the app runs unpooled)" in disabled.stdout, disabled.stdout
    assert "fits: at most 10 of the 17 connections" in disabled.stdout, disabled.stdout
    no_url = doctor({"POOL_SIZE": "5"})
    assert no_url.returncode == 2, no_url
    assert (
        " !     Error: neither DJANGO_SETTINGS_MODULE nor DATABASE_URL is set" in no_url.stdout
    ), no_url


def test_doctor_rejects_a_bad_setting_with_one_line(small_pg, doctor_env):
    result = doctor({**doctor_env, "POOL_SIZE": "lots"})
    assert result.returncode == 2, result
    assert (
        " !     Error: POOL_SIZE='lots' is not valid: expected a whole number from 1 to 1000"
        in result.stdout
    ), result.stdout


@pytest.fixture(scope="module")
def small_bouncer(small_pg: PostgresServer) -> Iterator[PgBouncer]:
    """A transaction pooler in front of small_pg, as Heroku's Connection Pooling is."""
    with PgBouncer.for_server(
        small_pg, {"app": "app"}, {"app": small_pg.password_of("app")}, default_pool_size=5
    ) as bouncer:
        yield bouncer


def test_doctor_behind_a_transaction_pooler_counts_the_formation_as_the_poolers_clients(
    small_pg, small_bouncer
):
    pooled_url = small_bouncer.url("app", "app")
    env = {
        "DATABASE_URL": pooled_url,
        "DATABASE_CONNECTION_POOL_URL": pooled_url,
        "POOL_SIZE": "5",
        "WEB_CONCURRENCY": "2",
    }
    result = doctor(env, "--dynos", "10")  # 100 connections: 17 directly would not do
    assert result.returncode == 0, result
    out = result.stdout
    address = f"127.0.0.1:{small_bouncer.port}"
    assert f"connects through DATABASE_URL: database 'app' on {address} as 'app'" in out, out
    assert "max_connections=20 (superuser_reserved_connections=3" in out, out
    assert "the pooler's connection to it: TLS TLSv1." in out, out
    assert "formation: 10 web dynos x 10 = 100" in out, out
    assert (
        f"behind a transaction pooler ({address}, DATABASE_CONNECTION_POOL_URL): these 100 "
        "are client connections to the pooler, not server connections" in out
    ), out
    assert "its pool size must stay within the 17 connections role 'app' may open" in out, out
    assert "fits: the pooler must accept 100 client connections from the app" in out, out
    assert "Error" not in out, out
    assert_no_password(small_pg, result)


def test_doctor_through_django_settings_sees_the_pooler_named_by_pool_transaction_pooler(
    small_pg, small_bouncer
):
    env = {"DATABASE_URL": small_bouncer.url("app", "app"), "POOL_TRANSACTION_POOLER": "1"}
    result = doctor(env, "--dynos", "4", app=True)
    assert result.returncode == 0, result
    out = result.stdout
    assert "connects through Django's settings (DJANGO_SETTINGS_MODULE=testproj.settings" in out
    assert (
        f"behind a transaction pooler (127.0.0.1:{small_bouncer.port}, "
        "POOL_TRANSACTION_POOLER=1): these 20 are client connections" in out
    ), out
    assert_no_password(small_pg, result)


def test_doctor_on_the_direct_url_with_a_pooler_attached_counts_direct_connections(
    small_pg, small_bouncer, doctor_env
):
    env = {**doctor_env, "DATABASE_CONNECTION_POOL_URL": small_bouncer.url("app", "app")}
    result = doctor(env, "--dynos", "3")
    assert result.returncode == 1, result
    out = result.stdout
    assert "this connection: TLS TLSv1." in out, out
    assert (
        "DATABASE_CONNECTION_POOL_URL is set, but this is not its address: the budget "
        "below counts direct connections (if the app's settings connect through the "
        "pooler, set DJANGO_SETTINGS_MODULE to check them)" in out
    ), out
    assert " !     Error: does not fit: the formation may open 30 connections; " in out, out


def _closed_port() -> int:
    from support.procs import free_port

    return free_port()


# -- on the emulated platform: a built slug, a web dyno, heroku run ----------------------------


@pytest.fixture(scope="module")
def built_app(small_pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The sample app built with the buildpack and released against ``small_pg``."""
    from support.heroku import HerokuApp

    config = {"WEB_CONCURRENCY": "2", "POOL_SIZE": "2", "POOL_METRICS_INTERVAL": "1"}
    app = HerokuApp(
        [REPO / "tests" / "app", REPO / "tests" / "buildpack_apps" / "base"],
        tmp_path_factory.mktemp("heroku") / "observed",
        config,
    )
    build = app.build()
    assert build.ok, build.log
    release = app.release(env={"DATABASE_URL": small_pg.url(sslmode="require")})
    assert release.returncode == 0, release.stderr
    return app


@pytest.mark.timeout(600)
def test_on_a_dyno_lines_name_the_dyno_and_heroku_run_doctor_judges_the_formation(
    built_app, small_pg
):
    url = small_pg.url(sslmode="require")
    web = built_app.start("web", env={"DATABASE_URL": url})
    try:
        for _ in range(10):
            assert web.get("/items/", timeout=REQUEST_TIMEOUT)[0] == 200

        def reported() -> list[dict[str, Any]] | None:
            lines = metric_lines(web.log_text())
            return lines if total(lines, "count#djpool.checkouts") >= 10 else None

        lines = wait_until(reported, timeout=60, message="metrics lines of web.1")
        workers = {str(pid) for pid in web.worker_pids()}
        assert {line["source"] for line in lines} == {"web.1"}, lines
        assert {line["pid"] for line in lines} <= workers, (lines, workers)
        assert all(line["sample#djpool.size"] == 2 for line in lines), lines
    finally:
        web.stop()
    # 2 web dynos x WEB_CONCURRENCY 2 x POOL_SIZE 2 = 8 of 17; 5 dynos: 20 > 17.
    fits = built_app.run("python -m djpool doctor --dynos 2", env={"DATABASE_URL": url})
    assert fits.returncode == 0, fits
    assert "POOL_METRICS_INTERVAL=1s" in fits.stdout, fits.stdout
    assert "WEB_CONCURRENCY=2 (from the environment)" in fits.stdout, fits.stdout
    assert "fits: at most 8 of the 17 connections" in fits.stdout, fits.stdout
    too_many = built_app.run("python -m djpool doctor --dynos 5", env={"DATABASE_URL": url})
    assert too_many.returncode == 1, too_many
    assert " !     With these settings 4 web dynos fit." in too_many.stdout, too_many.stdout
    assert " !     To run this formation: heroku config:set POOL_SIZE=1" in too_many.stdout
    assert small_pg.password_of("app") not in fits.stdout + fits.stderr + too_many.stdout
