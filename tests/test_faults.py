"""Faults: what the pooled app does when the database, the network or a worker fails.

Every test runs the sample app in real gunicorn workers with the shim, against
a real PostgreSQL (TLS, scram-sha-256), under load from several client
threads, and looks at what the clients got (HTTP answers), what the server
saw (pg_stat_activity, its log) and what the worker's pools hold (/pool/,
which reads the pools without a query).

Faults on the network go through tests/support/tcpproxy.py: a proxy between
the app and the server that cuts or black-holes one link, or all of them.
Tests that stop the server or fill its connection slots use a server of their
own, so the session's server stays up for the rest of the suite.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support import logs, stacks
from support.activity import (
    backend_pids,
    backend_waiting,
    backends_of_process,
    sample_backends,
    server_log_since,
    statements_logged,
)
from support.appserver import AppServer, AppServers, one_session_server
from support.concurrency import (
    Load,
    Outcome,
    Send,
    in_parallel,
    start_in_thread,
    summary,
    timed,
)
from support.postgres import PostgresServer, application_name_for
from support.tcpproxy import TcpProxy
from support.waiting import wait_until

DRIVER_STACKS = ["dj52-psycopg3", "dj52-psycopg2"]
REQUEST_TIMEOUT = 30.0
# What libpq says when it gives up on a black-holed link (keepalives or tcp_user_timeout).
TIMED_OUT = re.compile(r"(Connection|connection) timed out|timeout expired")
# What PostgreSQL says when every slot a non-superuser may use is taken (wording by version).
NO_SLOTS = re.compile(r"too many clients already|remaining connection slots are reserved")


# -- fixtures and senders (the machinery itself is in tests/support/) -------------------


@pytest.fixture
def run_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., AppServer]]:
    """``run_app(env, stack=..., **AppServer options)``: a started gunicorn, stopped after the test.

    Unlike conftest's start_app it does not tie the app to the session's
    server: ``env`` carries the whole DATABASE_URL. If the test fails, the
    gunicorn logs are added to its report (conftest's report hook).
    """
    servers = AppServers(request.node)

    def start(env: dict[str, str], stack: str = stacks.DEFAULT_STACK, **options: Any) -> AppServer:
        return servers.start(AppServer(stack, env, log_dir=tmp_path, **options))

    yield start
    servers.stop_all()


@pytest.fixture
def own_pg(request: pytest.FixtureRequest) -> Iterator[Callable[..., PostgresServer]]:
    """``own_pg(**PostgresServer options)``: a server of the test's own, role and db ``app``."""
    servers: list[PostgresServer] = []

    def start(**options: Any) -> PostgresServer:
        server = PostgresServer(**options)
        servers.append(server)
        server.start()
        server.create_role("app", secrets.token_urlsafe(18), createdb=True)
        server.create_database("app", owner="app")
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def proxy(pg: PostgresServer) -> Iterator[TcpProxy]:
    """A TcpProxy in front of the session's server."""
    with TcpProxy(pg.host, pg.port) as running:
        yield running


def sql(app: AppServer, *statements: str, atomic: bool = False) -> Send:
    return lambda: app.sql(*statements, atomic=atomic, timeout=REQUEST_TIMEOUT)


def get(app: AppServer, path: str) -> Send:
    return lambda: app.get(path, timeout=REQUEST_TIMEOUT)


# -- the proxy itself ------------------------------------------------------------------


def test_proxy_cuts_and_black_holes_links_and_resumes_them(pg, appname):
    """The fault injector does what the other tests rely on, seen from a libpq client."""
    with TcpProxy(pg.host, pg.port) as proxy:
        params = {
            "port": proxy.port,
            "sslmode": "require",
            "application_name": appname,
            "autocommit": True,
        }
        with pg.connect(**params) as first, pg.connect(**params) as second:
            assert proxy.links() == 2
            [(port,)] = pg.query(
                "SELECT client_port FROM pg_stat_activity WHERE pid = %s", [first.info.backend_pid]
            )
            assert proxy.cut("rst", pg_client_port=port) == 1
            with pytest.raises(psycopg.OperationalError):
                first.execute("SELECT 1")
            assert second.execute("SELECT 2").fetchone() == (2,)  # the other link carries on

        with pg.connect(**params, tcp_user_timeout=1000) as conn:
            assert proxy.stall() >= 1
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError, match=TIMED_OUT):
                conn.execute("SELECT 3")  # nothing acknowledges the query: the kernel gives up
            assert time.monotonic() - started < 20
            with pytest.raises(psycopg.OperationalError):
                pg.connect(**params, connect_timeout=2)  # new links are black-holed too
            proxy.resume()

        with pg.connect(**params) as conn:
            conn.execute("SELECT 1")
            assert proxy.stall() == proxy.links()
            answer: list[Any] = []
            waiting = threading.Thread(
                target=lambda: answer.append(conn.execute("SELECT 4").fetchone())
            )
            waiting.start()
            waiting.join(timeout=1.0)
            assert waiting.is_alive() and not answer, "a stalled link delivered a reply"
            proxy.resume()  # the query, retransmitted, arrives; so does the reply
            waiting.join(timeout=30)
            assert answer == [(4,)]


# -- the server restarts -----------------------------------------------------------------


def test_requests_succeed_again_one_second_after_a_restart(own_pg, run_app, appname):
    """Fast shutdown then start under load: no dead pooled connection is handed out afterwards."""
    server = own_pg()
    app = run_app(
        {"DATABASE_URL": server.url(sslmode="require", application_name=appname), "POOL_SIZE": "3"},
        workers=2,
        threads=3,
    )
    with Load(get(app, "/pid/"), clients=6) as load:
        load.wait_for_successes(30)
        [(before,)] = server.query(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [appname]
        )
        assert before >= 2, "the pools hold connections when the server goes down"
        down = time.monotonic()
        server.restart("fast")
        ready = time.monotonic()  # restart() returns once pg_isready says yes
        load.wait_for_successes(60, since=ready + 1.0)
        wait_until(lambda: time.monotonic() > ready + 4.0, timeout=10)  # keep the load on
    outcomes = load.stop()

    during = [o for o in outcomes if down <= o.started <= ready]
    # The restart was felt: every connection served before it is gone (whether
    # a request in flight failed depends on timing, and is allowed either way).
    pids_before = {o.body["pid"] for o in outcomes if o.ok and o.ended < down}
    late = [o for o in outcomes if o.started >= ready + 1.0]
    assert late and all(o.ok for o in late), summary(late)
    early = [o for o in outcomes if ready <= o.started < ready + 1.0]
    print(
        f"restart: {len(during)} requests during the outage ({summary(during)}); "
        f"in the first second after it: {summary(early)}; afterwards: {summary(late)}"
    )
    pids_after = {o.body["pid"] for o in late}
    assert pids_before and not pids_before & pids_after
    assert len(backend_pids(server, appname)) <= 2 * 3
    assert pids_after <= backend_pids(server, appname)


# -- pg_terminate_backend on idle pooled connections ---------------------------------------


@pytest.fixture(scope="module")
def logged_role(pg: PostgresServer) -> str:
    """A login role whose every statement the server logs (log_statement = 'all')."""
    pg.create_role("djpool_logged", secrets.token_urlsafe(18))
    pg.query("ALTER ROLE djpool_logged SET log_statement = 'all'")
    return "djpool_logged"


def warm_pool(app: AppServer, size: int) -> set[int]:
    """Check out ``size`` connections at once so the pool holds that many; their backend pids."""
    outcomes = in_parallel([get(app, "/slow/?ms=400")] * size)
    assert all(o.ok for o in outcomes), summary(outcomes)
    pool = app.settled_pool(checkedin=size)
    assert pool["connects"] == size
    return set(pool["idle_backend_pids"])


def test_killed_idle_connections_are_replaced_and_healthy_ones_cost_no_ping(
    pg, logged_role, run_app, appname
):
    app = run_app(
        {
            "DATABASE_URL": pg.url(user=logged_role, sslmode="require", application_name=appname),
            "POOL_SIZE": "4",
        },
        workers=1,
        threads=4,
    )
    pooled = warm_pool(app, 4)
    assert pooled == backend_pids(pg, appname)

    # Healthy: N requests from 4 clients, not one ping.
    log_start = logs.size(pg.log_path)
    healthy = in_parallel([get(app, "/pid/")] * 40)
    assert all(o.ok for o in healthy), summary(healthy)
    wait_until(
        lambda: (
            sum(1 for _pid, s in statements_logged(pg, log_start, appname) if s == "DISCARD ALL")
            >= 40
        ),
        message="40 resets in the log",
    )
    logged = statements_logged(pg, log_start, appname)
    assert [s for _pid, s in logged if s == "SELECT 1"] == [], "a healthy checkout pinged"
    # Not one round trip beyond the request's own query and the reset at checkin.
    assert (
        sorted(s for _pid, s in logged) == ["DISCARD ALL"] * 40 + ["SELECT pg_backend_pid()"] * 40
    )
    pool = app.settled_pool(checkedin=4)
    assert (pool["connects"], pool["invalidated"]) == (4, 0)

    # Kill two of the four while they sit idle in the pool, as an idle timeout would.
    killed = set(sorted(pooled)[:2])
    for pid in killed:
        pg.query("SELECT pg_terminate_backend(%s)", [pid])
    wait_until(lambda: not killed & backend_pids(pg, appname), message="killed backends gone")
    opened_before = pg.connections_opened(application_name=appname)
    log_start = logs.size(pg.log_path)

    # Four at once take every pooled connection, the two dead ones included.
    after = in_parallel([get(app, "/slow/?ms=300")] * 4)
    after += in_parallel([get(app, "/pid/")] * 40)
    assert all(o.ok for o in after), summary(after)
    used = {o.body["pid"] for o in after}
    assert not used & killed, "a killed connection was handed out"
    pool = app.settled_pool(checkedin=4)
    assert pool["invalidated"] == 2, pool  # each dead one noticed at checkout, once
    assert pool["connects"] == 6, pool  # and replaced
    assert pg.connections_opened(application_name=appname) == opened_before + 2
    survivors = pooled - killed
    assert set(pool["idle_backend_pids"]) >= survivors
    pings = [(pid, s) for pid, s in statements_logged(pg, log_start, appname) if s == "SELECT 1"]
    assert pings == [], "a surviving or new connection was pinged"


def test_conn_health_checks_pings_every_reuse_and_the_log_shows_it(
    pg, logged_role, run_app, appname
):
    """The control of the test above: the log does show pings when there are pings."""
    app = run_app(
        {
            "DATABASE_URL": pg.url(user=logged_role, sslmode="require", application_name=appname),
            "POOL_SIZE": "2",
            "APP_CONN_HEALTH_CHECKS": "1",
        },
        workers=1,
        threads=2,
    )
    log_start = logs.size(pg.log_path)
    for _ in range(10):
        assert app.get("/pid/")[0] == 200
    pool = app.settled_pool()
    wait_until(
        lambda: (
            sum(1 for _pid, s in statements_logged(pg, log_start, appname) if s == "DISCARD ALL")
            >= 10
        ),
        message="10 resets in the log",
    )
    pings = [s for _pid, s in statements_logged(pg, log_start, appname) if s == "SELECT 1"]
    assert len(pings) == pool["checkouts"] - pool["connects"] >= 8


# -- links cut or stalled mid-query and mid-transaction ------------------------------------


def through_proxy(pg: PostgresServer, proxy: TcpProxy, appname: str, **query: Any) -> str:
    return pg.url(port=proxy.port, sslmode="require", application_name=appname, **query)


RESET_FAILED = "discarded a pooled connection whose reset failed"


def assert_discarded(app: AppServer, pid: int) -> dict[str, Any]:
    """The broken connection was closed when it came back, not kept for the next checkout.

    Called while no other request runs: a broken connection put back in the
    pool would still be there (idle_broken), since only a checkout's liveness
    check would throw it away later. The reset's one warning says it was the
    checkin that discarded it.
    """
    pool = app.settled_pool()
    assert pid not in pool["idle_backend_pids"], f"the broken connection is back: {pool}"
    assert pool["idle_broken"] == 0, f"a broken connection waits in the pool: {pool}"
    assert pool["invalidated"] == 1, pool
    discarded = [line for line in app.log_text().splitlines() if RESET_FAILED in line]
    assert len(discarded) == 1, discarded
    return pool


def assert_others_fine(app: AppServer, outcomes: list[Outcome], pid: int, since: float) -> None:
    """Every other request succeeded, and none got the victim's connection once it had it."""
    outcomes = outcomes + in_parallel([get(app, "/pid/")] * 20)
    assert all(o.ok for o in outcomes), "another request failed: " + summary(outcomes)
    assert pid not in {o.body["pid"] for o in outcomes if o.started >= since}


Victim = tuple[threading.Thread, list[Outcome], int, int]


def victim_query(
    app: AppServer, pg: PostgresServer, appname: str, seconds: int, label: str = "victim"
) -> Victim:
    """Start a request whose query sleeps ``seconds`` on the server.

    Returns once the query runs: (the request's thread, its outcome once it
    ended, the backend's pid, its client_port, by which the proxy finds the link).
    """
    marker = f"{label}-{secrets.token_hex(4)}"
    request, victim = start_in_thread(sql(app, f"SELECT '{marker}', pg_sleep({seconds})"))
    pid, port = backend_waiting(pg, appname, "active", marker)
    return request, victim, pid, port


def victim_transaction(
    app: AppServer, pg: PostgresServer, appname: str, name: str, release: Path
) -> Victim:
    """Start a request that inserts item ``name`` in atomic() and waits for ``release`` to exist.

    Returns once its transaction is open and idle, as ``victim_query`` does.
    """
    request, victim = start_in_thread(get(app, f"/pause-in-atomic/?name={name}&release={release}"))
    pid, port = backend_waiting(pg, appname, "idle in transaction", name)
    return request, victim, pid, port


def failed_with_operational_error(victim: list[Outcome]) -> Outcome:
    [failed] = victim
    assert failed.status == 500 and failed.body["error"] == "OperationalError", failed
    return failed


def assert_rolled_back(pg: PostgresServer, appname: str, pid: int, name: str) -> None:
    """The server saw the link go, ended the session and rolled the insert of ``name`` back."""
    wait_until(lambda: pid not in backend_pids(pg, appname), message="the backend ended")
    assert pg.query("SELECT count(*) FROM core_item WHERE name = %s", [name], dbname="app") == [
        (0,)
    ]


@pytest.mark.parametrize("how", ["rst", "fin"])
def test_link_cut_mid_query_fails_that_request_only(pg, proxy, run_app, appname, how):
    app = run_app(
        {"DATABASE_URL": through_proxy(pg, proxy, appname), "POOL_SIZE": "3"}, workers=1, threads=4
    )
    with Load(get(app, "/pid/"), clients=2) as load:
        load.wait_for_successes(10)
        request, victim, pid, port = victim_query(app, pg, appname, 8)
        held = time.monotonic()
        load.wait_for_successes(20, since=held)  # alongside the victim's query
    outcomes = load.stop()  # quiet, so the pool is seen as the victim's checkin leaves it
    cut_at = time.monotonic()
    assert proxy.cut(how, pg_client_port=port) == 1
    request.join(timeout=REQUEST_TIMEOUT)
    pg.query("SELECT pg_terminate_backend(%s)", [pid])  # it would sleep on, talking to no one

    failed = failed_with_operational_error(victim)
    assert failed.body["pid"] == pid and failed.ended - cut_at < 10
    assert_discarded(app, pid)
    assert_others_fine(app, outcomes, pid, since=held)


@pytest.mark.parametrize("how", ["rst", "fin"])
def test_link_cut_mid_transaction_fails_that_request_and_rolls_back(
    pg, proxy, run_app, appname, migrated, tmp_path, how
):
    app = run_app(
        {"DATABASE_URL": through_proxy(pg, proxy, appname), "POOL_SIZE": "3"}, workers=1, threads=4
    )
    name = f"cut-mid-transaction-{secrets.token_hex(4)}"
    release = tmp_path / "release"
    with Load(get(app, "/pid/"), clients=2) as load:
        load.wait_for_successes(10)
        request, victim, pid, port = victim_transaction(app, pg, appname, name, release)
        held = time.monotonic()
        assert proxy.cut(how, pg_client_port=port) == 1
        load.wait_for_successes(20, since=time.monotonic())  # the others, after the cut
    outcomes = load.stop()
    release.touch()  # the view goes on with its next statement, on the cut link
    request.join(timeout=REQUEST_TIMEOUT)

    failed_with_operational_error(victim)
    assert_discarded(app, pid)
    assert_others_fine(app, outcomes, pid, since=held)
    assert_rolled_back(pg, appname, pid, name)


# libpq's own bounds, as a Heroku user puts them in DATABASE_URL's query.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 1,
    "keepalives_interval": 1,
    "keepalives_count": 2,
    "tcp_user_timeout": 2000,
}


def test_link_stalled_mid_query_is_bounded_by_keepalives(pg, proxy, run_app, appname):
    app = run_app(
        {"DATABASE_URL": through_proxy(pg, proxy, appname, **KEEPALIVES), "POOL_SIZE": "3"},
        workers=1,
        threads=4,
    )
    with Load(get(app, "/pid/"), clients=2) as load:
        load.wait_for_successes(10)
        request, victim, pid, port = victim_query(app, pg, appname, 20)
        held = stalled_at = time.monotonic()
        assert proxy.stall(pg_client_port=port) == 1
        load.wait_for_successes(20, since=stalled_at)  # the others carry on meanwhile
    outcomes = load.stop()
    request.join(timeout=REQUEST_TIMEOUT)
    proxy.cut("rst", pg_client_port=port)
    pg.query("SELECT pg_terminate_backend(%s)", [pid])

    failed = failed_with_operational_error(victim)
    assert TIMED_OUT.search(failed.body["message"]), failed.body
    # keepalives_idle + keepalives_interval x keepalives_count = 3 s, far below pg_sleep(20)
    assert failed.ended - stalled_at < 12
    assert_discarded(app, pid)
    assert_others_fine(app, outcomes, pid, since=held)


def test_link_stalled_mid_transaction_is_bounded_by_tcp_user_timeout(
    pg, proxy, run_app, appname, migrated, tmp_path
):
    app = run_app(
        {"DATABASE_URL": through_proxy(pg, proxy, appname, **KEEPALIVES), "POOL_SIZE": "3"},
        workers=1,
        threads=4,
    )
    name = f"stall-mid-transaction-{secrets.token_hex(4)}"
    release = tmp_path / "release"
    with Load(get(app, "/pid/"), clients=2) as load:
        load.wait_for_successes(10)
        request, victim, pid, port = victim_transaction(app, pg, appname, name, release)
        held = time.monotonic()
        assert proxy.stall(pg_client_port=port) == 1
        load.wait_for_successes(20, since=time.monotonic())  # the others carry on meanwhile
    outcomes = load.stop()
    released_at = time.monotonic()
    release.touch()  # the next statement is sent into the black hole
    request.join(timeout=REQUEST_TIMEOUT)
    proxy.cut("rst", pg_client_port=port)  # the server's side learns it now

    failed = failed_with_operational_error(victim)
    assert TIMED_OUT.search(failed.body["message"]), failed.body
    assert failed.ended - released_at < 12
    assert_discarded(app, pid)
    assert_others_fine(app, outcomes, pid, since=held)
    assert_rolled_back(pg, appname, pid, name)


def test_statement_timeout_does_not_bound_a_stalled_link(pg, proxy, run_app, appname):
    """Why the stall tests set keepalives: the server's own timeout cannot reach the client.

    statement_timeout cancels the query on the server, but its error is stuck
    in the black hole with everything else; the request waits until the link
    comes back. The connection itself is then fine and goes back to the pool.
    """
    app = run_app(
        {
            "DATABASE_URL": through_proxy(pg, proxy, appname, options="-c statement_timeout=500"),
            "POOL_SIZE": "2",
        },
        workers=1,
        threads=2,
    )
    request, victim, pid, port = victim_query(app, pg, appname, 5)
    proxy.stall(pg_client_port=port)
    # The server cancels the query after 0.5 s; the client still waits 3 s later.
    wait_until(
        lambda: (
            pg.query("SELECT state FROM pg_stat_activity WHERE pid = %s", [pid]) != [("active",)]
        ),
        timeout=10,
        message="the server cancelled the statement",
    )
    request.join(timeout=3.0)
    assert request.is_alive() and not victim, "the stalled request ended without the link"
    proxy.resume()
    request.join(timeout=REQUEST_TIMEOUT)
    [answer] = victim
    assert answer.status == 500 and "statement timeout" in answer.body["message"], answer
    pool = app.settled_pool()
    assert pid in pool["idle_backend_pids"] and pool["invalidated"] == 0, pool


# -- the server is full ----------------------------------------------------------------------


def test_server_at_max_connections_gives_a_clear_error_and_the_pool_recovers(
    own_pg, run_app, appname
):
    server = own_pg(max_connections=10)  # 3 of them reserved for superusers
    blockers = []
    try:
        while len(blockers) < 20:  # take every slot the app's role may use
            try:
                blockers.append(server.connect(application_name="blocker", autocommit=True))
            except psycopg.OperationalError as error:
                assert NO_SLOTS.search(str(error)), error
                break
        assert 3 <= len(blockers) < 20
        app = run_app(
            {
                "DATABASE_URL": server.url(sslmode="require", application_name=appname),
                "POOL_SIZE": "3",
                "POOL_TIMEOUT": "5",
            },
            workers=1,
            threads=4,
        )

        for _ in range(4):  # one after the other: each gets the server's refusal, at once
            refused = timed(sql(app, "SELECT pg_backend_pid()"))
            assert refused.status == 500 and refused.body["error"] == "OperationalError"
            assert NO_SLOTS.search(refused.body["message"]), refused.body
            assert refused.ended - refused.started < 3, "a refused connect waited"
        # At once: the requests waiting for a slot get the same refusal, not POOL_TIMEOUT.
        full = in_parallel([sql(app, "SELECT pg_backend_pid()")] * 8)
        for outcome in full:
            assert outcome.status == 500 and outcome.body["error"] == "OperationalError", outcome
            assert NO_SLOTS.search(outcome.body["message"]), outcome.body
            assert outcome.ended - outcome.started < 3, "a request waited for nothing"
        pool = app.settled_pool()
        assert (pool["checkedin"], pool["checkedout"], pool["overflow"]) == (0, 0, -3), pool
        assert backend_pids(server, appname) == set()

        blockers.pop().close()  # one slot frees up (once that backend has exited)
        wait_until(
            lambda: timed(sql(app, "SELECT pg_backend_pid()")).ok,
            timeout=15,
            interval=0.05,
            message="a request succeeds once a slot is free",
        )
        one = []
        for _ in range(5):  # each once the last is back (it goes back after its response)
            app.settled_pool()
            one.append(timed(sql(app, "SELECT pg_backend_pid()")))
        assert all(o.ok for o in one), summary(one)
        assert len({o.body["pid"] for o in one}) == 1

        for blocker in blockers:
            blocker.close()
        blockers.clear()
        with sample_backends(server, appname) as sampler:
            recovered = in_parallel([sql(app, "SELECT pg_backend_pid(), pg_sleep(0.2)")] * 12)
        assert all(o.ok for o in recovered), summary(recovered)
        assert sampler.highest <= 3
        pool = app.settled_pool()
        assert pool["checkedin"] + pool["checkedout"] <= 3 and pool["checkedout"] == 0
    finally:
        for blocker in blockers:
            blocker.close()


def test_a_failed_connect_does_not_make_waiting_requests_wait_pool_timeout(pg, run_app, appname):
    """Four requests at once, POOL_SIZE=1, a password the server refuses.

    Each should get the server's own refusal within about one connect's time,
    not wait on the pool's queue for a connection that will never come back
    (a failed connect puts nothing there) and then fail after POOL_TIMEOUT,
    some with "pool ... is exhausted" though nothing was ever checked out.
    The 50 ms proxy delay only widens the window in which the others arrive
    while the first connect is under way.
    """
    with TcpProxy(pg.host, pg.port, delay=0.05) as slow_link:
        app = run_app(
            {
                "DATABASE_URL": pg.url(
                    password="not-the-password",
                    port=slow_link.port,
                    sslmode="require",
                    application_name=appname,
                ),
                "POOL_SIZE": "1",
                "POOL_TIMEOUT": "4",
            },
            workers=1,
            threads=4,
        )
        outcomes = in_parallel([sql(app, "SELECT 1")] * 4)
    for outcome in outcomes:
        assert outcome.status == 500, outcome
        assert "password authentication failed" in outcome.body["message"], outcome.body
        assert outcome.ended - outcome.started < 3, outcome


# -- the pool is exhausted --------------------------------------------------------------------


def test_a_burst_beyond_the_pool_waits_pool_timeout_then_fails_naming_the_size(
    pg, run_app, appname
):
    app = run_app(
        {
            "DATABASE_URL": pg.url(sslmode="require", application_name=appname),
            "POOL_SIZE": "2",
            "POOL_TIMEOUT": "1",
        },
        workers=1,
        threads=10,
    )
    with sample_backends(pg, appname) as sampler:
        burst = in_parallel([sql(app, "SELECT pg_backend_pid(), pg_sleep(3)")] * 10)
    succeeded = [o for o in burst if o.ok]
    failed = [o for o in burst if not o.ok]
    assert len(succeeded) >= 2 and len(failed) >= 1, summary(burst)
    for outcome in failed:
        assert outcome.status == 500 and outcome.body["error"] == "OperationalError", outcome
        message = outcome.body["message"]
        assert "connection pool for database alias 'default' is exhausted" in message
        assert "POOL_SIZE=2" in message and "POOL_TIMEOUT=1s" in message, message
        assert 0.9 <= outcome.ended - outcome.started < 6, "the wait was not bounded"
    assert sampler.highest <= 2 and sampler.samples > 10
    pool = app.settled_pool(checkedin=2)
    assert pool["checkedout"] == 0
    assert app.get("/pid/")[0] == 200


# -- a request leaves its connection in a bad state ---------------------------------------------


BAD_REQUESTS = {
    "raise-in-atomic": ("GET", "/raise-in-atomic/?name={name}", None),
    "aborted-autocommit": ("GET", "/aborted/?via=autocommit", None),
    "aborted-begin": ("GET", "/aborted/?via=begin", None),
    "statement-timeout": (
        "POST",
        "/sql/",
        {"sql": ["SET statement_timeout = '100ms'", "SELECT pg_sleep(2)"]},
    ),
    "statement-timeout-in-atomic": (
        "POST",
        "/sql/",
        {
            "sql": [
                "INSERT INTO core_item (name, value) VALUES ('{name}', 0)",
                "SET LOCAL statement_timeout = '100ms'",
                "SELECT pg_sleep(2)",
            ],
            "atomic": True,
        },
    ),
}


@pytest.fixture(scope="module", params=DRIVER_STACKS)
def single_connection_app(request, pg, migrated, tmp_path_factory) -> Iterator[AppServer]:
    """One worker, one thread, POOL_SIZE=1: every request gets the same connection."""
    appname = application_name_for(f"{request.node.nodeid}::bad-state[{request.param}]")
    url = pg.url(sslmode="require", application_name=appname)
    with one_session_server(request.param, url, tmp_path_factory.mktemp("app")) as app:
        yield app


@pytest.mark.parametrize("kind", list(BAD_REQUESTS))
def test_the_next_request_gets_a_clean_connection_after_a_bad_one(single_connection_app, pg, kind):
    app = single_connection_app
    name = f"bad-{kind}-{secrets.token_hex(4)}"
    status, before = app.get("/pid/")
    assert status == 200
    pid = before["pid"]

    method, path, body = BAD_REQUESTS[kind]
    if method == "GET":
        status, answer = app.get(path.format(name=name))
    else:
        filled = {**body, "sql": [s.format(name=name) for s in body["sql"]]}
        status, answer = app.post_json(path, filled)
    if kind.startswith("aborted"):
        assert (status, answer["status"], answer["pid"]) == (200, "INERROR", pid), answer
    elif kind.startswith("statement-timeout"):
        assert status == 500 and "statement timeout" in answer["message"], answer
    else:
        assert status == 500

    # Back in the pool: the reset left the session idle, outside any transaction.
    wait_until(
        lambda: (
            pg.query("SELECT state, query FROM pg_stat_activity WHERE pid = %s", [pid])
            == [("idle", "DISCARD ALL")]
        ),
        message="the connection reset and idle in the pool",
    )
    status, after = app.post_json(
        "/sql/",
        {
            "sql": [
                "SELECT 1",
                "SELECT pg_backend_pid(), xact_start = query_start,"
                " current_setting('statement_timeout'), (SELECT count(*) FROM core_item"
                f" WHERE name = '{name}') FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            ]
        },
    )
    assert status == 200, after
    assert after["rows"] == [[pid, True, "0", 0]], after  # same backend, fresh transaction
    assert app.post_json("/sql/", {"sql": ["SELECT pg_sleep(0.3)"]})[0] == 200


# -- a gunicorn worker dies ----------------------------------------------------------------------


def test_a_sigkilled_worker_leaves_no_orphan_and_connections_stay_bounded(pg, run_app, appname):
    app = run_app(
        {"DATABASE_URL": pg.url(sslmode="require", application_name=appname), "POOL_SIZE": "2"},
        workers=2,
        threads=2,
    )
    workers = app.worker_pids()
    assert len(workers) == 2
    owned: dict[int, set[int]] = {}

    def both_workers_hold_connections() -> bool:
        outcomes = in_parallel([get(app, "/slow/?ms=200")] * 6)
        assert all(o.ok for o in outcomes), summary(outcomes)
        owned.update({w: backends_of_process(pg, appname, w) for w in workers})
        return all(owned.values())

    wait_until(
        both_workers_hold_connections,
        timeout=60,
        interval=0.1,
        message=lambda: f"connections in both workers: {owned}",
    )
    victim = workers[0]
    orphans = owned[victim]
    log_start = logs.size(pg.log_path)
    with sample_backends(pg, appname) as sampler, Load(get(app, "/pid/"), clients=3) as load:
        load.wait_for_successes(10)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(
            lambda: not orphans & backend_pids(pg, appname),
            timeout=30,
            message="the dead worker's backends ended",
        )
        gone_after = time.monotonic() - killed_at
        wait_until(
            lambda: len(app.worker_pids()) == 2 and victim not in app.worker_pids(),
            timeout=60,
            message="gunicorn started a new worker",
        )
        load.wait_for_successes(30, since=time.monotonic())
    outcomes = load.stop()

    assert sampler.highest <= 2 * 2, "more server connections than workers x POOL_SIZE"
    late = [o for o in outcomes if o.started > killed_at + gone_after]
    assert late and all(o.ok for o in late), summary(late)
    # Server detection, not POOL_RECYCLE (3600 s): the kernel closed the dead worker's
    # sockets, each idle backend read end of file and ended at once.
    assert gone_after < 10
    text = server_log_since(pg, log_start)
    for pid in orphans:
        assert re.search(rf"\[{pid}\] .*disconnection: session time", text), pid
    print(f"SIGKILL: {len(orphans)} orphan backends ended {gone_after:.3f} s after the kill")


@pytest.mark.parametrize("stack", DRIVER_STACKS)
def test_a_timed_out_worker_leaves_its_busy_backend_at_most_until_the_query_ends(
    pg, run_app, appname, stack
):
    """gunicorn --timeout kills a sync worker stuck in a slow request.

    What ends the busy backend depends on the driver, and the test pins both:
    - psycopg 3 waits for the server in Python, so gunicorn's SIGABRT handler
      runs (SystemExit) and psycopg cancels the query on its way out: the
      backend ends at once ("canceling statement due to user request");
    - psycopg2 waits in C, the handler cannot run, gunicorn SIGKILLs the
      worker; the kernel closes the socket, but a backend busy in pg_sleep
      does not read it: it ends when the query is over and its reply meets a
      reset ("could not receive data from client").
    Either way the server detects it, long before POOL_RECYCLE (3600 s).
    """
    app = run_app(
        {"DATABASE_URL": pg.url(sslmode="require", application_name=appname), "POOL_SIZE": "2"},
        stack=stack,
        workers=1,
        worker_class="sync",
        extra_args=["--timeout", "2", "--graceful-timeout", "1"],
    )
    [worker] = app.worker_pids()
    log_start = logs.size(pg.log_path)
    with sample_backends(pg, appname) as sampler:
        request, victim, busy, _port = victim_query(app, pg, appname, 6, label="slow")
        started = time.monotonic()
        wait_until(
            lambda: worker not in app.worker_pids(),
            timeout=30,
            message="gunicorn killed the timed-out worker",
        )
        killed_after = time.monotonic() - started
        request.join(timeout=REQUEST_TIMEOUT)
        wait_until(
            lambda: busy not in backend_pids(pg, appname),
            timeout=30,
            message="the orphaned busy backend ended",
        )
        ended_after = time.monotonic() - started
        wait_until(lambda: len(app.worker_pids()) == 1, timeout=60, message="a new worker")
        assert app.get("/pid/")[0] == 200
    [answer] = victim
    assert not answer.ok, answer
    assert sampler.highest <= 2
    lines = [line for line in server_log_since(pg, log_start).splitlines() if f"[{busy}]" in line]
    assert any("disconnection: session time" in line for line in lines), lines
    assert killed_after < 6, killed_after
    if stack.endswith("psycopg3"):
        assert any("canceling statement due to user request" in line for line in lines), lines
        assert ended_after < 6, (killed_after, ended_after)
    else:
        assert any("could not receive data from client" in line for line in lines), lines
        assert 5 <= ended_after < 20, (killed_after, ended_after)
    print(
        f"--timeout ({stack}): worker killed {killed_after:.1f} s into pg_sleep(6); "
        f"its backend ended {ended_after:.1f} s in"
    )
