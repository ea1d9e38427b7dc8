"""Which gunicorn worker of an emulated dyno did what: the buildpacks' shared scenario steps.

Both emulators (tests/support/heroku.py for the classic buildpack,
tests/support/cnb.py for the CNB) start web processes that answer HTTP
(``get``/``post_json``) and list their gunicorn workers (``worker_pids``). A
request reports the server backend it used and its client port; /proc says
which worker holds that socket. So a test can tell, from the outside, which
worker opened and reused which server connection.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Protocol

from support.concurrency import Sampler, in_threads
from support.procs import tcp_port_owner
from support.waiting import wait_until


class WebProcess(Protocol):
    """A web dyno or CNB web process, as the scenarios use it."""

    def get(self, path: str, timeout: float = 60) -> tuple[int, Any]: ...

    def post_json(self, path: str, obj: Any, timeout: float = 60) -> tuple[int, Any]: ...

    def worker_pids(self) -> list[int]: ...


def gunicorn_workers(web: WebProcess, count: int) -> list[int]:
    """The pids of the web process's ``count`` gunicorn workers, once all are up."""
    return wait_until(
        lambda: len(web.worker_pids()) == count and web.worker_pids(),
        timeout=30,
        interval=0.05,
        message=f"{count} gunicorn workers",
    )


def first_query_in_every_worker(web: WebProcess, workers: list[int]) -> None:
    """One query at a time until every worker has made one (and so built its pool).

    Makes sure every worker has built its pool before a burst is measured.
    Needs POOL_MAX_OVERFLOW=0, so that the connection stays open for /proc to see.
    """
    served: set[int | None] = set()
    for _ in range(200):
        status, body = web.post_json("/sql/", {"sql": ["SELECT inet_client_port()"]})
        assert status == 200, body
        served.add(tcp_port_owner(workers, body["rows"][0][0]))
        if served >= set(workers):
            return
    raise AssertionError(f"only workers {served} of {workers} answered 200 requests")


def djpool_in_every_worker(web: WebProcess, workers: list[int]) -> dict[int, bool]:
    """Bursts of /whoami/ until every worker answered: {worker pid: djpool loaded there}."""
    seen: dict[int, bool] = {}
    for _ in range(20):
        for body in in_threads(8, lambda _: web.get("/whoami/")[1]):
            seen[body["pid"]] = body["djpool"]
        if len(seen) == len(workers):
            break
    return seen


def backends_by_worker(
    web: WebProcess, workers: list[int], min_requests: int = 40
) -> tuple[dict[int, set[int]], int]:
    """Bursts of 8 queries until every worker served some: ({worker: backend pids}, requests)."""
    backends_of: dict[int, set[int]] = defaultdict(set)

    def backend(_: int) -> list[int]:
        status, body = web.post_json(
            "/sql/", {"sql": ["SELECT pg_backend_pid(), inet_client_port()"]}
        )
        assert status == 200, body
        return body["rows"][0]

    requests = 0
    for _ in range(20):
        for backend_pid, port in in_threads(8, backend):
            requests += 1
            owner = tcp_port_owner(workers, port)
            assert owner in workers, f"no worker holds the socket of backend {backend_pid}"
            backends_of[owner].add(backend_pid)
        if len(backends_of) == len(workers) and requests >= min_requests:
            break
    return dict(backends_of), requests


def peak_connections_under_load(
    web: WebProcess, pg: Any, appname: str, clients: int = 16, requests_each: int = 6
) -> tuple[list[int], int]:
    """``clients`` threads at once, each making ``requests_each`` 100 ms requests.

    Returns their statuses and the most server connections of ``appname``
    that pg_stat_activity showed at any moment of it.
    """

    def fire(_: int) -> list[int]:
        return [web.get("/slow/?ms=100")[0] for _ in range(requests_each)]

    with Sampler(lambda: len(pg.backends(application_name=appname)), interval=0.01) as sampler:
        statuses = [status for batch in in_threads(clients, fire) for status in batch]
    return statuses, sampler.highest


def every_worker_pools(
    web: WebProcess, count: int, pool_size: int
) -> tuple[dict[int, set[int]], int]:
    """The buildpacks' shared scenario: ``count`` workers, djpool in each, each its own pool.

    Every worker answers with djpool loaded, and uses between 1 and
    ``pool_size`` server backends of its own. Returns ({worker: backend
    pids}, requests made) for the caller's own assertions.
    """
    workers = gunicorn_workers(web, count)
    seen = djpool_in_every_worker(web, workers)
    assert sorted(seen) == workers
    assert all(seen.values()), seen
    first_query_in_every_worker(web, workers)
    backends_of, requests = backends_by_worker(web, workers)
    assert sorted(backends_of) == workers
    for worker, pids in backends_of.items():
        assert 1 <= len(pids) <= pool_size, (worker, pids)
    return backends_of, requests


# Run in a one-off process of an app that brings its own SQLAlchemy (both
# buildpacks' test): prints the SQLAlchemy version the app got, whether djpool
# built its registry, and what the app's own sitecustomize.py marked.
OWN_SQLALCHEMY_PROBE = (
    "import os, sqlalchemy\n"
    "from django.db import connection\n"
    "with connection.cursor() as c: c.execute('SELECT 1')\n"
    "from djpool import startup\n"
    "print(sqlalchemy.__version__, startup.registry() is not None, "
    "os.environ.get('APP_SITECUSTOMIZE'))"
)
