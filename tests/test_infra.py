"""The test infrastructure itself: the server is like Heroku Postgres, the app runs on every stack.

Nothing here loads djpool: these tests show what the suite stands on (a
TLS-only, scram-sha-256 server whose log counts logins; gunicorn serving the
sample app on each stack), so that a failure elsewhere is about djpool.
"""

from __future__ import annotations

import threading

import psycopg
import pytest

from support import stacks
from support.appserver import AppServer
from support.postgres import PostgresServer, application_name_for
from support.waiting import wait_until

STACK_VERSIONS = {
    "dj52-psycopg3": ("5.2", "psycopg"),
    "dj52-psycopg2": ("5.2", "psycopg2"),
    "dj42-psycopg3": ("4.2", "psycopg"),
    "dj42-psycopg2": ("4.2", "psycopg2"),
}


# -- the server ----------------------------------------------------------------


def test_a_connection_without_tls_is_rejected(pg):
    with pytest.raises(psycopg.OperationalError, match="pg_hba.conf rejects connection"):
        pg.connect(sslmode="disable")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_certificate_verifies_against_the_private_ca(pg, host):
    with pg.connect(host=host, sslmode="verify-full", sslrootcert=str(pg.ca_cert_path)) as conn:
        ssl, version = conn.execute(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert ssl is True and version.startswith("TLS")


def test_a_certificate_for_another_name_is_refused(pg):
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        pg.connect(host="db.example.com", hostaddr="127.0.0.1", sslmode="verify-full")


def test_logins_use_scram_and_a_wrong_password_fails(pg):
    [(stored,)] = pg.query("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
    assert stored.startswith("SCRAM-SHA-256$")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        pg.connect(password="not-" + pg.password_of("app"))
    with pg.connect() as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)


def test_the_unix_socket_also_asks_for_a_password(pg):
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(
            host=str(pg.socket_dir), port=pg.port, dbname="app", user="app", password=""
        )
    with psycopg.connect(
        host=str(pg.socket_dir),
        port=pg.port,
        dbname="app",
        user="app",
        password=pg.password_of("app"),
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_the_app_role_is_no_superuser_and_owns_its_database(pg):
    [(superuser, createdb)] = pg.query(
        "SELECT rolsuper, rolcreatedb FROM pg_roles WHERE rolname = 'app'"
    )
    assert (superuser, createdb) == (False, True)
    assert pg.query("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'") == [
        ("app",)
    ]


def test_the_log_counts_each_login_and_pg_stat_activity_shows_the_backend(pg, appname):
    assert pg.connections_opened(application_name=appname) == 0
    with (
        pg.connect(application_name=appname) as first,
        pg.connect(application_name=appname) as second,
    ):
        pids = {first.info.backend_pid, second.info.backend_pid}
        wait_until(
            lambda: pg.connections_opened(application_name=appname) == 2,
            message="two logins in the log",
        )
        assert {b.pid for b in pg.backends(application_name=appname)} == pids
        assert {b.usename for b in pg.backends(application_name=appname)} == {"app"}
        assert pg.connections_opened(application_name=appname, user="app", database="app") == 2
    wait_until(lambda: not pg.backends(application_name=appname), message="backends gone")


def test_terminate_backends_drops_the_connection(pg, appname):
    with pg.connect(application_name=appname, autocommit=True) as conn:
        assert pg.terminate_backends(application_name=appname) == [conn.info.backend_pid]
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    wait_until(lambda: not pg.backends(application_name=appname), message="backend gone")


def test_a_server_of_its_own_starts_restarts_and_cleans_up():
    server = PostgresServer(max_connections=7, settings={"idle_session_timeout": "1h"})
    server.start()
    base_dir, port = server.base_dir, server.port
    try:
        settings = dict(
            server.query(
                "SELECT name, setting FROM pg_settings WHERE name IN ('max_connections', 'ssl',"
                " 'fsync', 'password_encryption', 'log_connections', 'idle_session_timeout',"
                " 'listen_addresses', 'server_encoding')"
            )
        )
        assert settings == {
            "max_connections": "7",
            "ssl": "on",
            "fsync": "off",
            "password_encryption": "scram-sha-256",
            "log_connections": "on",
            "idle_session_timeout": "3600000",
            "listen_addresses": "127.0.0.1",
            "server_encoding": "UTF8",
        }
        [(before,)] = server.query("SELECT pg_postmaster_start_time()")
        server.restart()
        assert server.port == port
        [(after,)] = server.query("SELECT pg_postmaster_start_time()")  # reconnects by itself
        assert after > before
        assert "database system is ready to accept connections" in server.log_text()
        server.stop()
        with pytest.raises(psycopg.OperationalError):
            server.admin()
    finally:
        server.close()
    assert not base_dir.exists()


def test_application_names_are_short_readable_and_unique():
    short = application_name_for("tests/test_x.py::test_y[dj52-psycopg3]")
    assert short == "test_x.test_y.dj52-psycopg3"
    long_a = application_name_for("tests/test_x.py::test_" + "a" * 80 + "[one]")
    long_b = application_name_for("tests/test_x.py::test_" + "a" * 80 + "[two]")
    assert len(long_a) <= 60 and len(long_b) <= 60 and long_a != long_b


# -- the stacks ------------------------------------------------------------------


@pytest.mark.parametrize("stack", stacks.STACKS)
def test_each_stack_runs_its_own_django_and_driver(stack):
    django_version, driver = STACK_VERSIONS[stack]
    result = stacks.check(
        stacks.run_python(
            stack,
            (
                "import django, importlib.util, os, sys\n"
                "print(django.get_version())\n"
                "print(importlib.util.find_spec('psycopg') is not None)\n"
                "print(importlib.util.find_spec('psycopg2') is not None)\n"
                "print(os.environ.get('PYTHONPATH', ''))\n"
            ),
            shim=False,
        )
    )
    version, has_psycopg, has_psycopg2, pythonpath = result.stdout.splitlines() + [""] * (
        4 - len(result.stdout.splitlines())
    )
    assert version.startswith(django_version + ".")
    assert (has_psycopg, has_psycopg2) == (
        ("True", "False") if driver == "psycopg" else ("False", "True")
    )
    assert str(stacks.SHIM_DIR) not in pythonpath


def test_the_shim_goes_first_on_pythonpath_when_asked():
    env = stacks.stack_env({}, shim=True, app=True)
    assert env["PYTHONPATH"].split(":") == [str(stacks.SHIM_DIR), str(stacks.APP_DIR)]
    assert env["DJANGO_SETTINGS_MODULE"] == "testproj.settings"
    assert "PYTHONPATH" not in stacks.stack_env({}, shim=False)


@pytest.mark.parametrize("stack", stacks.STACKS)
def test_gunicorn_serves_the_app_on_each_stack_without_the_shim(stack, start_app, pg, appname):
    # CONN_MAX_AGE=600 keeps the worker's connection open, so it stays visible.
    app = start_app(stack, {"APP_CONN_MAX_AGE": "600"}, shim=False, workers=1, threads=1)
    status, who = app.get("/whoami/")
    assert status == 200
    assert who["pid"] in app.worker_pids()
    assert who["djpool"] is False
    assert who["django"].startswith(STACK_VERSIONS[stack][0] + ".")
    assert who["driver"] == STACK_VERSIONS[stack][1]

    status, body = app.get("/pid/")
    assert status == 200
    backends = wait_until(
        lambda: pg.backends(application_name=appname),
        message="the app's backend in pg_stat_activity",
    )
    assert [(b.pid, b.datname, b.usename) for b in backends] == [(body["pid"], "app", "app")]
    assert pg.connections_opened(application_name=appname) == 1
    assert app.djpool_lines() == []


def test_a_backend_is_visible_during_the_request_and_closed_after_it(start_app, pg, appname):
    app = start_app(shim=False)
    answers = []
    request = threading.Thread(target=lambda: answers.append(app.get("/slow/?ms=2000")))
    request.start()
    try:
        [busy] = wait_until(
            lambda: [b for b in pg.backends(application_name=appname) if b.state == "active"],
            timeout=30,  # a fresh venv's first request imports Django's backend first
            message="the request's backend running pg_sleep",
        )
        assert "pg_sleep" in busy.query
    finally:
        request.join(30)
    assert answers == [(200, {"pid": busy.pid})]
    # CONN_MAX_AGE=0 (the default): Django closes the connection when the request ends.
    wait_until(
        lambda: not pg.backends(application_name=appname),
        message="the backend closed after the request",
    )


# -- the sample app's views, unpooled, on each stack ----------------------------------


@pytest.fixture(scope="module", params=stacks.STACKS)
def app(request, pg, migrated, tmp_path_factory):
    env = {
        "DATABASE_URL": pg.url(
            sslmode="require", application_name=f"test_infra.views.{request.param}"
        )
    }
    with AppServer(
        request.param, env, shim=False, log_dir=tmp_path_factory.mktemp("app")
    ) as server:
        yield server


def test_health_answers_without_the_database(app):
    assert app.get("/health/") == (200, "ok")


def test_sql_runs_statements_and_reports_database_errors(app):
    status, body = app.post_json(
        "/sql/", {"sql": ["SET application_name = 'x'", "SELECT 1, 'two', now()", "SELECT 3"]}
    )
    assert status == 200 and body["rows"] == [[3]] and isinstance(body["pid"], int)
    status, body = app.post_json("/sql/", {"sql": ["SELECT 1, 'two', now()"], "atomic": True})
    assert status == 200 and body["rows"][0][:2] == [1, "two"]
    assert isinstance(body["rows"][0][2], str)
    status, body = app.post_json("/sql/", {"sql": ["SELECT * FROM no_such_table"]})
    assert status == 500
    assert body["error"] == "ProgrammingError" and "no_such_table" in body["message"]
    assert body["driver_error"] in ("UndefinedTable", "ProgrammingError")  # psycopg, psycopg2


def test_iterate_leaves_a_with_hold_cursor_open(app):
    status, body = app.get("/iterate/")
    assert status == 200
    assert [holdable for _name, holdable in body["cursors"]] == [True]


def test_an_exception_in_atomic_rolls_the_insert_back(app):
    status, _page = app.get("/raise-in-atomic/?name=infra-raised")
    assert status == 500
    status, body = app.post_json(
        "/sql/", {"sql": ["SELECT count(*) FROM core_item WHERE name = 'infra-raised'"]}
    )
    assert body["rows"] == [[0]]
    assert "RuntimeError: raised inside transaction.atomic()" in app.log_text()


@pytest.mark.parametrize("via", ["autocommit", "begin"])
def test_aborted_leaves_the_transaction_failed(app, via):
    status, body = app.get(f"/aborted/?via={via}")
    assert status == 200 and body["status"] == "INERROR" and body["via"] == via
    assert app.post_json("/sql/", {"sql": ["SELECT 1"]})[0] == 200


def test_items_views_query_the_seeded_items(app):
    assert app.get("/items/?name=item-7") == (200, {"found": True, "value": 7})
    assert app.get("/items/?name=nope") == (200, {"found": False, "value": None})
    assert app.get("/items3/") == (200, {"values": [1, 2, 3]})
