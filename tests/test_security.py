"""Security: one request's session never reaches the next, secrets stay secret, TLS holds.

Through HTTP, on gunicorn with the shim, against a real PostgreSQL:

- isolation: with POOL_SIZE=1 and one thread every request gets the same
  server session; request A leaves state behind, request B (same backend pid)
  must see none of it;
- secrets: for bad URLs, failed connects and refused logins, the password is
  nowhere in gunicorn's output, HTTP 500 bodies (DEBUG off), a one-off
  process's traceback, the server's log or the repr() of the pools;
- TLS: sslmode, sslrootcert and the client certificate, from DATABASE_URL's
  query or from OPTIONS in the settings, are on every pooled connection, and a
  wrong CA means no connection at all, never an unverified one.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from support import logs, stacks
from support.activity import server_log_since
from support.appserver import AppServer, AppServerFailed, one_session_server
from support.concurrency import in_parallel, summary
from support.postgres import PostgresServer, application_name_for
from support.procs import free_port
from support.waiting import wait_until

DRIVER_STACKS = ["dj52-psycopg3", "dj52-psycopg2"]
CERTIFICATE_ERROR = "certificate verify failed"


# -- session isolation through HTTP -----------------------------------------------------


@pytest.fixture(scope="module")
def other_role(pg: PostgresServer) -> str:
    """A role the app's role may SET ROLE to."""
    pg.create_role("djpool_sec_other", secrets.token_urlsafe(12), login=False)
    pg.query("GRANT djpool_sec_other TO app")
    return "djpool_sec_other"


@pytest.fixture(scope="module", params=stacks.STACKS)
def one_session_app(request, pg, migrated, other_role, tmp_path_factory) -> Iterator[AppServer]:
    """One worker, one thread, POOL_SIZE=1: every request gets the same server session."""
    appname = application_name_for(f"{request.node.nodeid}::isolation[{request.param}]")
    url = pg.url(sslmode="require", application_name=appname)
    with one_session_server(request.param, url, tmp_path_factory.mktemp("app")) as app:
        yield app


# kind: (statements of request A, rows A must see, statements of request B, rows B must see).
# {mark} is replaced by a value unique to the test.
LEFT_BEHIND: dict[str, tuple[list[str], list[list[Any]], list[str], list[list[Any]]]] = {
    "set": (
        [
            "SET work_mem = '7777kB'",
            "SELECT setting, source FROM pg_settings WHERE name = 'work_mem'",
        ],
        [["7777", "session"]],
        ["SELECT setting = '7777' OR source = 'session' FROM pg_settings WHERE name = 'work_mem'"],
        [[False]],
    ),
    "set_config": (
        [
            "SELECT set_config('djpool.secret', '{mark}', false)",
            "SELECT current_setting('djpool.secret', true)",
        ],
        [["{mark}"]],
        ["SELECT coalesce(current_setting('djpool.secret', true), '')"],
        [[""]],
    ),
    "set_role": (
        ["SET ROLE djpool_sec_other", "SELECT current_user, session_user"],
        [["djpool_sec_other", "app"]],
        ["SELECT current_user, session_user"],
        [["app", "app"]],
    ),
    "temp_table": (
        [
            "CREATE TEMP TABLE djpool_secret AS SELECT '{mark}'::text AS v",
            "SELECT v FROM djpool_secret",
        ],
        [["{mark}"]],
        ["SELECT to_regclass('pg_temp.djpool_secret') IS NULL"],
        [[True]],
    ),
    "prepared_statement": (
        ["PREPARE djpool_secret AS SELECT '{mark}'::text", "EXECUTE djpool_secret"],
        [["{mark}"]],
        ["SELECT count(*) FROM pg_prepared_statements WHERE name = 'djpool_secret'"],
        [[0]],
    ),
    "listen": (
        ["LISTEN djpool_secret", "SELECT pg_listening_channels()"],
        [["djpool_secret"]],
        ["SELECT count(*) FROM pg_listening_channels()"],
        [[0]],
    ),
    "advisory_lock": (
        [
            "SELECT pg_advisory_lock(hashtext('{mark}'))",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        ],
        [[1]],
        ["SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"],
        [[0]],
    ),
    "open_transaction": (
        [
            "BEGIN",
            "INSERT INTO core_item (name, value) VALUES ('{mark}', 1)",
            "SELECT count(*) FROM core_item WHERE name = '{mark}'",
        ],
        [[1]],
        [
            "SELECT (SELECT count(*) FROM core_item WHERE name = '{mark}'),"
            " xact_start = query_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ],
        [[0, True]],
    ),
}


def fill(value: Any, mark: str) -> Any:
    if isinstance(value, str):
        return value.replace("{mark}", mark)
    if isinstance(value, list):
        return [fill(item, mark) for item in value]
    return value


@pytest.mark.parametrize("kind", list(LEFT_BEHIND))
def test_the_next_request_on_the_same_backend_sees_nothing_of_the_last(one_session_app, pg, kind):
    app = one_session_app
    mark = f"left-by-a-{secrets.token_hex(6)}"
    a_statements, a_rows, b_statements, b_rows = fill(LEFT_BEHIND[kind], mark)

    status, a = app.post_json("/sql/", {"sql": a_statements})
    assert status == 200 and a["rows"] == a_rows, f"request A did not set its state: {a}"
    status, b = app.post_json("/sql/", {"sql": b_statements})
    assert status == 200, b
    assert b["pid"] == a["pid"], "B must run on A's server session for the test to mean anything"
    assert b["rows"] == b_rows, f"request B saw what A left: {b}"
    if kind == "advisory_lock":  # and nobody else is kept from the lock
        assert pg.query(
            "SELECT pg_try_advisory_lock(hashtext(%s)), pg_advisory_unlock(hashtext(%s))",
            [mark, mark],
            dbname="app",
        ) == [(True, True)]
    if kind == "open_transaction":
        assert pg.query("SELECT count(*) FROM core_item WHERE name = %s", [mark], dbname="app") == [
            (0,)
        ]


def test_a_with_hold_cursor_of_an_unfinished_iterator_is_gone_for_the_next_request(one_session_app):
    app = one_session_app
    status, a = app.get("/iterate/")
    assert status == 200
    assert a["cursors"] and all(holdable for _name, holdable in a["cursors"]), a
    status, b = app.post_json("/sql/", {"sql": ["SELECT count(*) FROM pg_cursors"]})
    assert status == 200 and b["pid"] == a["pid"], b
    assert b["rows"] == [[0]], f"request B sees A's cursor: {b}"


# -- no password anywhere ----------------------------------------------------------------


def secret_password() -> tuple[str, str]:
    """(password, token): the token is the part searched for; hex survives any quoting."""
    token = secrets.token_hex(10)
    return f"Pw/{token}:@%#", token


def q(password: str) -> str:
    return quote(password, safe="")


BAD_INPUTS: dict[str, tuple[Callable[[PostgresServer, str], str], str]] = {
    # name: (DATABASE_URL from (server, password), text the outcome must show)
    "wrong password": (
        lambda pg, pw: pg.url(password=pw, sslmode="require"),
        "password authentication failed",
    ),
    "wrong port": (
        lambda pg, pw: f"postgres://app:{q(pw)}@127.0.0.1:{free_port()}/app?sslmode=require",
        "Connection refused",
    ),
    "wrong host (no such socket directory)": (
        lambda pg, pw: f"postgres://app:{q(pw)}@%2Fnonexistent%2Fdjpool/app",
        "No such file or directory",
    ),
    # The app's own settings (dj_database_url) or Django refuse the next three
    # before Django's PostgreSQL backend is imported: djpool never starts, says
    # nothing, and the app's own error must not show the password either.
    "port not a number": (
        lambda pg, pw: f"postgres://app:{q(pw)}@127.0.0.1:port/app",
        "not a valid url",
    ),
    "not PostgreSQL": (
        lambda pg, pw: f"mysql://app:{q(pw)}@127.0.0.1:{pg.port}/app",
        "Error loading MySQLdb module",
    ),
    "no database name": (
        lambda pg, pw: f"postgres://app:{q(pw)}@127.0.0.1:{pg.port}",
        "no database name",
    ),
    "password not quoted": (
        lambda pg, pw: f"postgres://app:{pw}@127.0.0.1:{pg.port}/app",
        "not a valid url",
    ),
}
# The inputs that reach djpool: it must have said something (and nothing secret).
DJPOOL_SEES = {
    "wrong password",
    "wrong port",
    "wrong host (no such socket directory)",
    "no database name",
}


# A refused login goes through each driver's error path; the other inputs fail in libpq
# (same for both drivers) or before any driver, so one stack is enough for them.
@pytest.mark.parametrize(
    ("bad", "stack"),
    [
        ("wrong password", "dj52-psycopg2"),
        *[(bad, stacks.DEFAULT_STACK) for bad in BAD_INPUTS],
    ],
)
def test_no_password_in_logs_error_pages_or_tracebacks(pg, tmp_path, appname, bad, stack):
    password, token = secret_password()
    make_url, evidence = BAD_INPUTS[bad]
    url = make_url(pg, password)
    assert token in url
    log_start = logs.size(pg.log_path)
    seen: list[str] = []

    app = AppServer(
        stack,
        {"DATABASE_URL": url, "POOL_SIZE": "1", "POOL_TIMEOUT": "2"},
        workers=1,
        threads=2,
        log_dir=tmp_path,
        start_timeout=30,
    )
    try:
        app.start()
    except AppServerFailed as error:  # the settings cannot even be loaded: the boot traceback
        seen.append(str(error))
    else:
        for path in ("/pid/", "/pool/?repr=1"):
            seen.append(repr(app.get(path)))
        seen.append(repr(app.post_json("/sql/", {"sql": ["SELECT 1"]})))
    finally:
        app.stop()
    seen.append(app.log_text())
    # A one-off process (heroku run) whose first query fails: its traceback on stderr.
    one_off = stacks.run_manage(
        stack,
        "shell",
        "-c",
        "from django.db import connection; connection.ensure_connection()",
        env={"DATABASE_URL": url},
        timeout=60,
    )
    seen += [one_off.stdout, one_off.stderr]
    seen.append(server_log_since(pg, log_start))

    everything = "\n".join(seen)
    assert evidence in everything, f"the bad input was not exercised:\n{everything[-3000:]}"
    assert ("djpool:" in everything) == (bad in DJPOOL_SEES), everything[-3000:]
    assert token not in everything, "the password leaked:\n" + "\n".join(
        line for line in everything.splitlines() if token in line
    )


@pytest.mark.parametrize("stack", DRIVER_STACKS)
def test_no_password_in_pool_reprs_start_line_or_exhaustion_errors(pg, tmp_path, appname, stack):
    password = pg.password_of("app")
    app = AppServer(
        stack,
        {
            "DATABASE_URL": pg.url(sslmode="require", application_name=appname),
            "POOL_SIZE": "1",
            "POOL_TIMEOUT": "0.5",
        },
        workers=1,
        threads=3,
        log_dir=tmp_path,
    )
    with app:
        outcomes = in_parallel([lambda: app.sql("SELECT pg_sleep(1.5)")] * 3, timeout=90)
        status, pools = app.get("/pool/?repr=1")
    answers = [(o.status, o.body) for o in outcomes]
    assert status == 200 and pools["pools"], pools
    [pool] = pools["pools"]
    assert {"registry_repr", "entry_repr", "pool_repr", "status"} <= set(pool)
    exhausted = [body for status, body in answers if status == 500]
    assert exhausted and all("is exhausted" in body["message"] for body in exhausted), answers
    everything = json.dumps([answers, pools]) + app.log_text()
    assert "djpool: pooling database 'app'" in everything
    for shown in (password, quote(password, safe="")):
        assert shown not in everything


# -- TLS on every pooled connection -----------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"openssl {' '.join(args)}:\n{result.stderr}"


CLIENT_DN = "/CN=djpool-tests-client"


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A server of its own that also takes non-TLS logins and asks for client certificates.

    Non-TLS is allowed for role app so that a connection without TLS is
    possible at all (and would show up as ssl = false); ssl_ca_file makes the
    server ask for a client certificate, so pg_stat_ssl.client_dn shows
    whether the client-side TLS settings were applied to each connection.
    Also makes a client certificate signed by the server's CA and a CA of
    nobody's, for verify-full to reject.
    """
    server = PostgresServer()
    try:
        server.start()
        server.create_role("app", secrets.token_urlsafe(18))
        server.create_database("app", owner="app")
        hba = server.data_dir / "pg_hba.conf"
        rules = hba.read_text().replace(
            "hostnossl  all",
            "hostnossl  all       app   127.0.0.1/32  scram-sha-256\nhostnossl  all",
            1,
        )
        hba.write_text(rules)
        server.settings["ssl_ca_file"] = str(server.ca_cert_path)
        server.restart()

        files = tmp_path_factory.mktemp("tls")
        ca_dir = server.base_dir / "tls"
        (files / "client.ext").write_text(
            "basicConstraints = CA:FALSE\n"
            "keyUsage = digitalSignature\n"
            "extendedKeyUsage = clientAuth\n"
        )
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        openssl(
            "req",
            "-new",
            *ec,
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            CLIENT_DN,
            cwd=files,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            str(ca_dir / "ca.crt"),
            "-CAkey",
            str(ca_dir / "ca.key"),
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            "client.ext",
            "-out",
            "client.crt",
            cwd=files,
        )
        openssl(
            "req",
            "-x509",
            "-new",
            *ec,
            "-keyout",
            "wrong-ca.key",
            "-out",
            "wrong-ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=a CA that signed nothing here",
            cwd=files,
        )
        (files / "client.key").chmod(0o600)
        yield {
            "server": server,
            "right_ca": str(server.ca_cert_path),
            "wrong_ca": str(files / "wrong-ca.crt"),
            "cert": str(files / "client.crt"),
            "key": str(files / "client.key"),
        }
    finally:
        server.close()


def app_env(tls: dict[str, Any], appname: str, source: str, options: dict[str, str]) -> dict:
    """DATABASE_URL with ``options`` in its query (source "url") or in OPTIONS ("settings")."""
    server = tls["server"]
    if source == "url":
        return {"DATABASE_URL": server.url(application_name=appname, **options)}
    return {
        "DATABASE_URL": server.url(application_name=appname),
        "APP_DB_OPTIONS": json.dumps(options),
    }


def ssl_of_backends(server: PostgresServer, appname: str) -> list[tuple[bool, str | None]]:
    return server.query(
        "SELECT s.ssl, s.client_dn FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
        " WHERE a.application_name = %s ORDER BY a.pid",
        [appname],
    )


def fill_the_pool(app: AppServer, size: int) -> None:
    answers = in_parallel([lambda: app.get("/slow/?ms=300", timeout=60)] * size, timeout=90)
    assert all(o.ok for o in answers), summary(answers)
    answers = in_parallel([lambda: app.get("/pid/", timeout=60)] * 12, timeout=90)
    assert all(o.ok for o in answers), summary(answers)


# Each sslmode from each source once, each driver twice (pairwise, to keep the run short).
@pytest.mark.parametrize(
    ("sslmode", "source", "stack"),
    [
        ("require", "url", "dj52-psycopg3"),
        ("require", "settings", "dj52-psycopg2"),
        ("verify-full", "url", "dj52-psycopg2"),
        ("verify-full", "settings", "dj52-psycopg3"),
    ],
)
def test_tls_settings_are_on_every_pooled_connection(
    tls, tmp_path, appname, stack, source, sslmode
):
    options = {"sslmode": sslmode, "sslcert": tls["cert"], "sslkey": tls["key"]}
    if sslmode == "verify-full":
        options["sslrootcert"] = tls["right_ca"]
    env = {**app_env(tls, appname, source, options), "POOL_SIZE": "3"}
    with AppServer(stack, env, workers=1, threads=3, log_dir=tmp_path) as app:
        fill_the_pool(app, 3)
        backends = ssl_of_backends(tls["server"], appname)
    assert backends == [(True, CLIENT_DN)] * 3, backends


def test_the_tls_check_can_see_a_connection_without_tls(tls, tmp_path, appname):
    """The control: sslmode=disable is allowed for this role here, and it shows."""
    env = {**app_env(tls, appname, "url", {"sslmode": "disable"}), "POOL_SIZE": "2"}
    with AppServer(stacks.DEFAULT_STACK, env, workers=1, threads=2, log_dir=tmp_path) as app:
        fill_the_pool(app, 2)
        backends = ssl_of_backends(tls["server"], appname)
    assert backends == [(False, None)] * 2, backends


@pytest.mark.parametrize(
    ("source", "stack"), [("url", "dj52-psycopg3"), ("settings", "dj52-psycopg2")]
)
def test_verify_full_with_a_wrong_ca_connects_nothing(tls, tmp_path, appname, stack, source):
    server = tls["server"]
    options = {"sslmode": "verify-full", "sslrootcert": tls["wrong_ca"]}
    env = {**app_env(tls, appname, source, options), "POOL_SIZE": "3"}
    with AppServer(stack, env, workers=1, threads=3, log_dir=tmp_path) as app:
        answers = in_parallel([lambda: app.sql("SELECT pg_backend_pid()")] * 6, timeout=90)
        for answer in answers:
            assert answer.status == 500 and answer.body["error"] == "OperationalError", answer
            assert CERTIFICATE_ERROR in answer.body["message"], answer
        status, pools = app.get("/pool/")
    assert status == 200
    for pool in pools["pools"]:
        assert (pool["checkedin"], pool["checkedout"], pool["connects"]) == (0, 0, 0), pool
    # Not one login: the handshake stopped before the password was ever sent.
    wait_until(lambda: not server.backends(application_name=appname), timeout=10)
    assert server.connections_opened(application_name=appname) == 0
