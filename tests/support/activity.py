"""What the server sees of an app: its backends, which worker holds each, what they ran.

The behaviour tests assert on the database's side of the pool (how many
server sessions, which backend served a request, which statements reached
the server), so they ask PostgreSQL (pg_stat_activity, its log) and the
kernel (which process holds a backend's client socket), never the pool.
Every app's backends are found by the ``application_name`` its
DATABASE_URL carries (conftest's ``appname``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from support import logs, procs
from support.concurrency import Sampler
from support.waiting import wait_until

if TYPE_CHECKING:
    from support.postgres import PostgresServer


def backend_pids(pg: PostgresServer, appname: str) -> set[int]:
    """The pids of the app's client backends now."""
    return {backend.pid for backend in pg.backends(application_name=appname)}


def backend_count(pg: PostgresServer, appname: str) -> int:
    """How many server processes carry the app's application_name now."""
    [(count,)] = pg.query(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [appname]
    )
    return int(count)


def sample_backends(pg: PostgresServer, appname: str) -> Sampler:
    """A Sampler of ``backend_count`` every 5 ms: ``with sample_backends(pg, app) as s: ...``.

    ``s.highest`` is then the most server connections the app had at once.
    """
    return Sampler(lambda: backend_count(pg, appname))


def backend_waiting(
    pg: PostgresServer, appname: str, state: str, marker: str, timeout: float = 30.0
) -> tuple[int, int]:
    """(pid, client_port) of the app's one backend in ``state`` whose query holds ``marker``.

    Polls until there is one: how a test finds the backend serving a request
    it started (the request's SQL carries a unique marker) to act on it.
    """

    def find() -> list[tuple[int, int]]:
        return pg.query(
            "SELECT pid, client_port FROM pg_stat_activity"
            " WHERE application_name = %s AND state = %s AND position(%s in query) > 0",
            [appname, state, marker],
        )

    [(pid, port)] = wait_until(
        find, timeout=timeout, message=f"a backend of {appname} {state} with {marker!r}"
    )
    return pid, port


def backends_of_process(pg: PostgresServer, appname: str, pid: int) -> set[int]:
    """The app's backends whose client socket process ``pid`` holds (e.g. one gunicorn worker)."""
    ports = procs.local_tcp_ports(pid)
    rows = pg.query(
        "SELECT pid, client_port FROM pg_stat_activity WHERE application_name = %s", [appname]
    )
    return {backend for backend, port in rows if port in ports}


def server_log_since(pg: PostgresServer, offset: int) -> str:
    """The server's log after byte ``offset`` (take ``logs.size(pg.log_path)`` before acting)."""
    return logs.read_since(pg.log_path, offset)


def statements_logged(pg: PostgresServer, since: int, appname: str) -> list[tuple[int, str]]:
    """(backend pid, statement) of ``appname``'s ``log_statement`` lines after byte ``since``.

    Needs a role with ``log_statement = 'all'``; reads the log_line_prefix
    PostgresServer sets (``%m [%p] %q%u@%d app=%a``).
    """
    pattern = re.compile(
        rf"\[(\d+)\] \S+ app={re.escape(appname)} LOG:  statement: (.*)$", re.MULTILINE
    )
    text = server_log_since(pg, since)
    return [(int(pid), statement.strip()) for pid, statement in pattern.findall(text)]
