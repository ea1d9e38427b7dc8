"""Two-tier pooling: djpool in every dyno, a server-side PgBouncer in transaction mode (issue 12).

The setup is a plan with a 20-connection limit (an Essential plan's) and a
server-side pooler like Heroku's Connection Pooling, on this machine:

- a PostgreSQL of the module's own (tests/support/postgres.py) with
  ``max_connections=20`` and a time zone that is not Django's (so a session
  that misses Django's time zone shows);
- a real PgBouncer (Debian's, tests/support/pgbouncer.py) in transaction mode
  with ``default_pool_size=15``: clients log in with SCRAM over TLS, PgBouncer
  logs in to PostgreSQL with SCRAM over TLS (certificate verified);
- web dynos of one slug, built and booted by the Heroku emulator
  (tests/support/heroku.py): the sample app with the one settings line a user
  changes (read DATABASE_CONNECTION_POOL_URL), gunicorn gthread WORKERS x 4
  threads (the Procfile), POOL_SIZE=4.

6 dynos, as the issue asks: 18 Python processes, with the load driven from
the test process too, fit a 2-core CI machine (the module takes 1-3 minutes
with the build). Should DYNOS have to come down, keep the ratios that make
the point: the dynos' threads (DYNOS x WORKERS x 4) and their pools
(DYNOS x WORKERS x POOL_SIZE) more than PgBouncer's 15 server connections,
which are fewer than the server's 17 non-superuser slots. The restart test
uses 2 dynos: it is about the pools' recovery, not the bound.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.concurrency import Load, Outcome, Sampler, in_parallel, in_threads, summary, timed
from support.heroku import REPO, Dyno, HerokuApp
from support.logs import djpool_lines
from support.pgbouncer import PgBouncer
from support.postgres import PostgresServer
from support.waiting import wait_until

APP_SOURCE = REPO / "tests" / "app"
APPS = REPO / "tests" / "buildpack_apps"

DYNOS = 6
WORKERS = 2  # WEB_CONCURRENCY; the Procfile runs gunicorn gthread with 4 threads each
THREADS = 4
POOL_SIZE = 4
SERVER_MAX_CONNECTIONS = 20  # 3 of them reserved for superusers
PGBOUNCER_POOL_SIZE = 15
SERVER_TIME_ZONE = "America/New_York"  # Django's TIME_ZONE is UTC
ITEMS = 100  # item-1 .. item-100, values 1 .. 100
CLIENTS = 24  # HTTP clients at once, all dynos together
REQUESTS_PER_CLIENT = 20
REQUEST_TIMEOUT = 30
DATABASE = "app"
ROLE = "app"
POOLER_SETTINGS = "testproj.connection_pooling_settings"

# Builds take longer than the suite's default per-test timeout.
pytestmark = pytest.mark.timeout(600)


# -- the stage: server, PgBouncer, slug --------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """PostgreSQL with an Essential plan's 20 connections, the app's role and database."""
    with PostgresServer(
        max_connections=SERVER_MAX_CONNECTIONS, settings={"timezone": SERVER_TIME_ZONE}
    ) as pg:
        pg.create_role(ROLE, secrets.token_urlsafe(18), createdb=False)
        pg.create_database(DATABASE, owner=ROLE)
        yield pg


@pytest.fixture(scope="module")
def bouncer(server: PostgresServer) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode, 15 server connections, TLS and SCRAM on both sides."""
    with PgBouncer.for_server(
        server,
        {DATABASE: DATABASE},
        {ROLE: server.password_of(ROLE)},
        default_pool_size=PGBOUNCER_POOL_SIZE,
        max_client_conn=300,
    ) as pgbouncer:
        yield pgbouncer


@pytest.fixture(scope="module")
def slug(tmp_path_factory: pytest.TempPathFactory, server: PostgresServer) -> HerokuApp:
    """The sample app with the Connection Pooling settings line, built and released once."""
    app = HerokuApp(
        [APP_SOURCE, APPS / "base", APPS / "connection_pooling"],
        tmp_path_factory.mktemp("heroku") / "pooled",
        {"WEB_CONCURRENCY": str(WORKERS), "POOL_SIZE": str(POOL_SIZE)},
    )
    build = app.build()
    assert build.ok, build.log
    direct = {"DATABASE_URL": direct_url(server, "release")}
    release = app.release(env=direct)
    assert release.returncode == 0, release.stderr
    seeded = app.run(f"python manage.py seed_items {ITEMS}", env=direct)
    assert seeded.returncode == 0, seeded.stderr
    return app


def direct_url(server: PostgresServer, application_name: str) -> str:
    return server.url(DATABASE, ROLE, sslmode="require", application_name=application_name)


def heroku_env(
    server: PostgresServer, bouncer: PgBouncer, name: str, **config: str
) -> dict[str, str]:
    """Config vars as Heroku sets them with Connection Pooling attached, and the app's settings.

    DATABASE_URL stays the direct URL; DATABASE_CONNECTION_POOL_URL is
    PgBouncer's; the settings (DJANGO_SETTINGS_MODULE) read the latter.
    """
    return {
        "DATABASE_URL": direct_url(server, name),
        "DATABASE_CONNECTION_POOL_URL": bouncer.url(DATABASE, ROLE, application_name=name),
        "DJANGO_SETTINGS_MODULE": POOLER_SETTINGS,
        **config,
    }


@pytest.fixture
def start_dynos(slug: HerokuApp) -> Iterator[Callable[..., list[Dyno]]]:
    """``start_dynos(count, env)``: web.1 .. web.N booted at once; all stopped after the test."""
    started: list[Dyno] = []

    def start(count: int, env: dict[str, str]) -> list[Dyno]:
        dynos = [
            Dyno(slug, f"web.{n}", slug.process_types()["web"], env)
            for n in range(len(started) + 1, len(started) + count + 1)
        ]
        started.extend(dynos)
        in_threads(count, lambda index: dynos[index].start(timeout=120), timeout=240)
        workers = int(env.get("WEB_CONCURRENCY", WORKERS))
        for dyno in dynos:
            wait_until(
                lambda dyno=dyno: len(dyno.worker_pids()) == workers,
                timeout=60,
                message=f"{workers} gunicorn workers in {dyno.name}",
            )
        return dynos

    yield start
    for dyno in reversed(started):
        dyno.stop()


# -- load --------------------------------------------------------------------------


def make_counter(dyno: Dyno) -> str:
    """A new item with value 0 for /pooler/increment/ (its name)."""
    name = f"counter-{secrets.token_hex(4)}"
    status, body = dyno.post_json(
        "/sql/", {"sql": [f"INSERT INTO core_item (name, value) VALUES ('{name}', 0)"]}
    )
    assert status == 200, body
    return name


def mixed_paths(counter: str) -> list[str]:
    """One indexed read, every item through iterator(), a locked increment, a slower query."""
    return [
        "/items/?name=item-7",
        "/pooler/iterate/",
        f"/pooler/increment/?name={counter}",
        "/slow/?ms=20",
    ]


def drive(
    dynos: list[Dyno],
    paths: list[str],
    clients: int = CLIENTS,
    per_client: int = REQUESTS_PER_CLIENT,
) -> list[tuple[str, Outcome]]:
    """``clients`` clients at once, each sending ``per_client`` requests round dynos and paths."""

    def client(index: int) -> list[tuple[str, Outcome]]:
        got = []
        for n in range(per_client):
            dyno = dynos[(index + n) % len(dynos)]
            path = paths[(index // len(dynos) + n) % len(paths)]
            send = lambda dyno=dyno, path=path: dyno.get(path, timeout=REQUEST_TIMEOUT)  # noqa: E731
            got.append((path, timed(send)))
        return got

    return [pair for got in in_threads(clients, client, timeout=300) for pair in got]


class Watch:
    """Peaks of server backends and PgBouncer clients, and login counts, over a ``with`` block."""

    def __init__(self, server: PostgresServer, bouncer: PgBouncer) -> None:
        self.server = server
        self.bouncer = bouncer
        self.backends = Sampler(
            lambda: sum(b.usename == ROLE for b in server.backends(datname=DATABASE)),
            interval=0.01,
            max_seconds=280,
        )
        self.clients = Sampler(
            lambda: bouncer.client_connections(DATABASE), interval=0.05, max_seconds=280
        )

    def __enter__(self) -> Watch:
        self._server_logins = self.server.connections_opened(user=ROLE, database=DATABASE)
        self._client_logins = self.bouncer.client_logins(DATABASE)
        self._xacts = self.bouncer.stats(DATABASE).get("total_xact_count", 0)
        self.backends.__enter__()
        self.clients.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.clients.__exit__(*exc_info)
        self.backends.__exit__(*exc_info)
        self.server_logins = (
            self.server.connections_opened(user=ROLE, database=DATABASE) - self._server_logins
        )
        self.client_logins = self.bouncer.client_logins(DATABASE) - self._client_logins
        self.transactions = self.bouncer.stats(DATABASE).get("total_xact_count", 0) - self._xacts


def failures(results: list[tuple[str, Outcome]]) -> list[tuple[str, int | None, str]]:
    return [(path, o.status, str(o.body)[:200]) for path, o in results if not o.ok]


def driver_error(outcome: Outcome) -> str | None:
    """The driver's exception class a failed request reports (poolerviews, /sql/)."""
    return outcome.body.get("driver_error") if isinstance(outcome.body, dict) else None


def check_answers(server: PostgresServer, results: list[tuple[str, Outcome]], counter: str) -> None:
    """iterator() saw every item; the increments under select_for_update lost none."""
    increments = []
    for path, outcome in results:
        if not outcome.ok:
            continue
        if path.startswith("/pooler/iterate/"):
            assert outcome.body == {"count": ITEMS, "sum": ITEMS * (ITEMS + 1) // 2}, outcome.body
        elif path.startswith("/pooler/increment/"):
            increments.append(outcome.body["value"])
    # Each increment saw the value the one before it wrote: 1, 2, ..., n, none twice.
    assert sorted(increments) == list(range(1, len(increments) + 1)), Counter(increments)
    assert increments, "no increment succeeded"
    assert counter_value(server, counter) == len(increments)


def counter_value(server: PostgresServer, counter: str) -> int:
    rows = server.query("SELECT value FROM core_item WHERE name = %s", [counter], dbname=DATABASE)
    return int(rows[0][0])


# -- the tests ---------------------------------------------------------------------


def test_without_djpool_every_request_logs_in_to_pgbouncer(
    server: PostgresServer, bouncer: PgBouncer, start_dynos
) -> None:
    """The same dynos and load with POOL_DISABLED=1, as an app behind PgBouncer is without djpool.

    PgBouncer still bounds the server's connections, but every request opens
    a client connection to it: TCP, TLS and a SCRAM login, for every request.
    And iterator()'s server-side cursors meet transaction pooling: a request
    fails when its FETCH lands on another server connection (InvalidCursorName),
    or when its DECLARE lands on one where another client's WITH HOLD cursor of
    the same name is left (DuplicateCursor). Whether and how often depends on
    timing; what is asserted is that nothing else fails.
    """
    dynos = start_dynos(DYNOS, heroku_env(server, bouncer, "unpooled", POOL_DISABLED="1"))
    assert all(djpool_lines(dyno.log_text()) == [] for dyno in dynos)
    counter = make_counter(dynos[0])
    with Watch(server, bouncer) as watch:
        results = drive(dynos, mixed_paths(counter))
    answered = [outcome for _path, outcome in results if outcome.status is not None]
    assert len(answered) == len(results), failures(results)
    # One login to PgBouncer per request, every one of them.
    assert watch.client_logins == len(results)
    assert watch.backends.highest <= PGBOUNCER_POOL_SIZE
    assert watch.server_logins <= PGBOUNCER_POOL_SIZE
    broken = failures(results)
    errors = Counter(
        (path.split("?")[0], driver_error(outcome)) for path, outcome in results if not outcome.ok
    )
    # Only iterator() breaks: its cursor was declared on one server connection and
    # is fetched from (or closed, or declared again under the same name) on another.
    assert {path for path, _error in errors} <= {"/pooler/iterate/"}, broken
    check_answers(server, results, counter)
    print(
        f"\nunpooled: {len(results)} requests, failed: {dict(errors)}, "
        f"{watch.client_logins} PgBouncer logins, {watch.server_logins} server logins, "
        f"peak {watch.backends.highest} server connections, "
        f"{watch.transactions} transactions through PgBouncer"
    )


def test_dynos_share_the_poolers_server_connections(
    server: PostgresServer, bouncer: PgBouncer, start_dynos
) -> None:
    """djpool in every dyno through PgBouncer: every request served, both tiers bounded.

    The settings read DATABASE_CONNECTION_POOL_URL, so djpool treats the
    alias as behind a transaction pooler without being told: server-side
    cursors off (iterator() works), no DISCARD ALL at checkin.
    """
    dynos = start_dynos(DYNOS, heroku_env(server, bouncer, "pooled"))
    counter = make_counter(dynos[0])
    with Watch(server, bouncer) as watch:
        results = drive(dynos, mixed_paths(counter))
    assert failures(results) == []
    check_answers(server, results, counter)
    # The server never sees more than PgBouncer's pool; PgBouncer never sees more
    # clients than the dynos' pools hold, and they log in once, not per request.
    assert watch.backends.highest <= PGBOUNCER_POOL_SIZE
    assert watch.clients.highest <= DYNOS * WORKERS * POOL_SIZE
    assert watch.client_logins <= DYNOS * WORKERS * POOL_SIZE < len(results)
    assert watch.server_logins <= PGBOUNCER_POOL_SIZE
    for dyno in dynos:
        start_line, *notices = djpool_lines(dyno.log_text())
        assert f"transaction pooler: aliases on 127.0.0.1:{bouncer.port}" in start_line
        # Once per process that made the alias's wrapper (with --preload, the master).
        assert notices and set(notices) == {
            f"djpool: database alias 'default' is behind a transaction pooler "
            f"(127.0.0.1:{bouncer.port}): server-side cursors off, no DISCARD ALL at checkin"
        }, notices
    status, body = dynos[0].get("/pooler/session/")
    assert (status, body) == (
        200,
        {"time_zone": "UTC", "server_side_cursors": False, "prepare_threshold": None},
    )
    print(
        f"\npooled: {len(results)} requests, 0 failed, {watch.client_logins} PgBouncer logins, "
        f"{watch.server_logins} server logins, peak {watch.backends.highest} server "
        f"connections, peak {watch.clients.highest} PgBouncer clients, "
        f"{watch.transactions} transactions through PgBouncer"
    )


def test_one_transaction_per_request_through_the_pooler(
    server: PostgresServer, bouncer: PgBouncer, start_dynos
) -> None:
    """The reset behind a transaction pooler is client-side only: no DISCARD ALL, no SET.

    PgBouncer counts the transactions it routes: a request of one indexed
    query is one transaction. (DISCARD ALL would be a second one, and, as it
    resets the time zone PgBouncer keeps for the client, Django's SET TIME
    ZONE a third: docs/transaction-pooling.md has the measurements.)
    """
    (dyno,) = start_dynos(1, heroku_env(server, bouncer, "one-xact", WEB_CONCURRENCY="1"))
    # Every connection of the pool made (and set up: Django's SET TIME ZONE), so
    # that no request below opens one, even if it comes before the last checkin.
    warm = in_parallel([lambda: dyno.get("/slow/?ms=300")] * POOL_SIZE)
    assert all(o.ok for o in warm), summary(warm)

    def pool() -> dict[str, int]:
        status, body = dyno.get("/pool/")
        assert status == 200, body
        return body["pools"][0]

    wait_until(lambda: pool()["checkedin"] == POOL_SIZE, timeout=10)
    before = bouncer.stats(DATABASE)["total_xact_count"]
    for _ in range(20):
        status, body = dyno.get("/items/?name=item-3")
        assert (status, body) == (200, {"found": True, "value": 3})
    assert pool()["connects"] == POOL_SIZE
    assert bouncer.stats(DATABASE)["total_xact_count"] - before == 20


def test_a_transaction_left_open_does_not_hold_a_server_connection(
    server: PostgresServer, bouncer: PgBouncer, start_dynos
) -> None:
    """A request leaves a transaction open: the checkin ends it, the server connection is free."""
    (dyno,) = start_dynos(1, heroku_env(server, bouncer, "left-open", WEB_CONCURRENCY="1"))
    for via in ("begin", "autocommit"):
        status, body = dyno.get(f"/aborted/?via={via}")
        assert (status, body["status"]) == (200, "INERROR"), body
        wait_until(
            lambda: all(row["sv_active"] == 0 for row in bouncer.pools(DATABASE)),
            timeout=10,
            message=lambda: f"PgBouncer's server connections released: {bouncer.pools(DATABASE)}",
        )
        states = {b.state for b in server.backends(datname=DATABASE) if b.usename == ROLE}
        assert states <= {"idle"}, states
        assert dyno.get("/items/?name=item-4") == (200, {"found": True, "value": 4})


def test_pgbouncer_restarted_during_load(
    server: PostgresServer, bouncer: PgBouncer, start_dynos
) -> None:
    """PgBouncer restarts under load: requests that start once it is back all succeed.

    Its restart closes every client connection the pools hold; djpool's
    checkout sees the closed socket and connects again, so no request after
    the restart is given a dead connection.
    """
    dynos = start_dynos(2, heroku_env(server, bouncer, "restart"))
    paths = ["/items/?name=item-5", "/pooler/iterate/"]
    turn = iter(range(10**6))

    def send() -> tuple[int, object]:
        n = next(turn)
        return dynos[n % 2].get(paths[n // 2 % 2], timeout=REQUEST_TIMEOUT)

    with Load(send, clients=8) as load:
        load.wait_for_successes(40)
        bouncer.restart()
        back = time.monotonic()
        load.wait_for_successes(200, since=back)
        outcomes = load.stop()
    before = [o for o in outcomes if o.ended < back]
    after = [o for o in outcomes if o.started >= back]
    assert sum(o.ok for o in before) >= 40
    assert len(after) >= 200 and all(o.ok for o in after), summary(after)
    assert bouncer.client_connections(DATABASE) <= 2 * WORKERS * POOL_SIZE


def test_pool_transaction_pooler_names_a_self_hosted_pgbouncer(
    server: PostgresServer, bouncer: PgBouncer, start_dynos
) -> None:
    """DATABASE_URL straight to a PgBouncer djpool cannot recognise: POOL_TRANSACTION_POOLER=1."""
    env = {
        "DATABASE_URL": bouncer.url(DATABASE, ROLE, application_name="explicit"),
        "POOL_TRANSACTION_POOLER": "1",
    }
    (dyno,) = start_dynos(1, env)
    outcomes = in_parallel([lambda: dyno.get("/pooler/iterate/?chunk=2")] * 16)
    assert all(o.ok for o in outcomes), summary(outcomes)
    assert {o.body["count"] for o in outcomes} == {ITEMS}
    start_line, *notices = djpool_lines(dyno.log_text())
    assert "; transaction pooler: every alias (POOL_TRANSACTION_POOLER=1)" in start_line
    assert notices and set(notices) == {
        "djpool: database alias 'default' is behind a transaction pooler "
        "(POOL_TRANSACTION_POOLER=1): server-side cursors off, no DISCARD ALL at checkin"
    }, notices
    assert dyno.get("/pooler/session/") == (
        200,
        {"time_zone": "UTC", "server_side_cursors": False, "prepare_threshold": None},
    )


def test_a_time_zone_one_request_set_is_put_back_for_the_next_behind_the_pooler(
    server: PostgresServer, bouncer: PgBouncer, start_dynos
) -> None:
    """Behind the pooler there is no DISCARD ALL: Django's check at every checkout sets it back.

    One worker, one pooled connection: the next request gets the same client
    connection to PgBouncer, which keeps the SET for that client.
    """
    env = heroku_env(server, bouncer, "zone", WEB_CONCURRENCY="1", POOL_SIZE="1")
    (dyno,) = start_dynos(1, env)
    for _ in range(3):
        status, body = dyno.post_json("/sql/", {"sql": ["SET TIME ZONE 'Asia/Tokyo'"]})
        assert status == 200, body
        assert dyno.get("/pooler/session/")[1]["time_zone"] == "UTC"


def test_prepare_threshold_is_kept_off_behind_the_pooler(
    server: PostgresServer, bouncer: PgBouncer, start_dynos
) -> None:
    """OPTIONS turning psycopg's prepared statements on: one warning, and they stay off.

    Prepared statements live on one server connection; behind a transaction
    pooler the next execution may run on another ("prepared statement
    _pg3_0 does not exist"), unless the pooler tracks them.
    """
    env = heroku_env(
        server, bouncer, "prepared", APP_DB_OPTIONS='{"prepare_threshold": 1}', WEB_CONCURRENCY="1"
    )
    (dyno,) = start_dynos(1, env)
    outcomes = in_parallel([lambda: dyno.get("/items/?name=item-6")] * 24)
    assert all(o.ok for o in outcomes), summary(outcomes)
    assert dyno.get("/pooler/session/") == (
        200,
        {"time_zone": "UTC", "server_side_cursors": False, "prepare_threshold": None},
    )
    warnings = [line for line in djpool_lines(dyno.log_text()) if "prepare_threshold" in line]
    assert len(warnings) == 1, djpool_lines(dyno.log_text())
    assert "'default'" in warnings[0]


def test_a_bad_pool_transaction_pooler_fails_the_build(tmp_path: Path) -> None:
    app = HerokuApp(
        [APP_SOURCE, APPS / "base"], tmp_path / "bad", {"POOL_TRANSACTION_POOLER": "maybe"}
    )
    build = app.build()
    assert not build.ok
    assert (
        " !     POOL_TRANSACTION_POOLER='maybe' is not valid: expected one of "
        "1/true/yes/on or 0/false/no/off"
    ) in build.log, build.log


def test_a_bad_pool_transaction_pooler_at_runtime_runs_unpooled(
    server: PostgresServer, slug: HerokuApp
) -> None:
    done = slug.run(
        "python -c 'import django.db.backends.postgresql.base'",
        env={"DATABASE_URL": direct_url(server, "bad-var"), "POOL_TRANSACTION_POOLER": "maybe"},
    )
    assert done.returncode == 0, done.stderr
    assert djpool_lines(done.stderr) == [
        "djpool: POOL_TRANSACTION_POOLER='maybe' is not valid: expected one of "
        "1/true/yes/on or 0/false/no/off; running unpooled"
    ]


def test_pgbouncer_speaks_tls_and_scram_on_both_hops(
    server: PostgresServer, bouncer: PgBouncer
) -> None:
    """The stage is what Heroku's pooler is: TLS and SCRAM from the client, TLS to the server."""
    import psycopg

    with bouncer.connect(DATABASE, ROLE, application_name="tls-check", autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        (server_side_tls,) = conn.execute(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert server_side_tls is True
        mine = [c for c in bouncer.clients(DATABASE) if c["application_name"] == "tls-check"]
        assert len(mine) == 1 and mine[0]["tls"].startswith("TLSv1."), mine
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        bouncer.connect(DATABASE, ROLE, sslmode="disable").close()
    with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):
        bouncer.connect(DATABASE, ROLE, password="not-" + server.password_of(ROLE)).close()
    with pytest.raises(psycopg.OperationalError):
        bouncer.connect(DATABASE, ROLE, sslmode="verify-full", sslrootcert=str(server.ca_cert_path))
    bouncer.connect(
        DATABASE, ROLE, sslmode="verify-full", sslrootcert=str(bouncer.ca_cert_path)
    ).close()
