"""What a DISCARD ALL at checkin does behind PgBouncer in transaction mode (issue 12).

djpool's reset runs DISCARD ALL when a connection goes back to the pool, so
the next request gets a clean session. Behind a transaction pooler the
session belongs to the pooler's server connection, not to the client. This
measures both resets a pool could do there, with PgBouncer (Debian's, as
tests/support/pgbouncer.py starts it: transaction mode, TLS and SCRAM) in
front of a PostgreSQL whose time zone is not the clients':

- client-side only: end the transaction, nothing sent (what djpool does);
- DISCARD ALL: one more statement after each request.

CLIENTS threads each hold one connection to PgBouncer, as a pool's
connections, and run REQUESTS "requests": Django's time zone check (SET TIME
ZONE if the connection's TimeZone is not UTC), one query reading the
session's work_mem, then a session-level ``SET work_mem`` of the client's
own, the state a request may leave behind. Printed per round and reset:
requests/s, latency, transactions through PgBouncer per request (SHOW
STATS), how many requests saw another client's work_mem, and how often the
time zone had to be set again.

    .venv/bench/bin/python bench/pooler_reset.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.pgbouncer import PgBouncer  # noqa: E402
from support.postgres import PostgresServer  # noqa: E402

CLIENTS = 8
REQUESTS = 300
SERVER_CONNECTIONS = 4
SERVER_TIME_ZONE = "America/New_York"
DEFAULT_WORK_MEM = "4MB"
RESETS = ("client-side", "DISCARD ALL")


def run(bouncer: PgBouncer, reset: str) -> dict[str, float]:
    """CLIENTS clients x REQUESTS requests with one kind of reset; the figures."""
    import psycopg

    lock = threading.Lock()
    times: list[float] = []
    counts = {"foreign": 0, "time_zone_set": 0}
    before = bouncer.stats("app").get("total_xact_count", 0)

    def client(index: int) -> None:
        # prepare_threshold=None: prepared statements break behind the pooler (Django's default)
        with psycopg.connect(
            bouncer.url("app", "app", application_name=f"client-{index}"),
            autocommit=True,
            prepare_threshold=None,
        ) as connection:
            for _ in range(REQUESTS):
                started = time.perf_counter()
                time_zone_set = connection.info.parameter_status("TimeZone") != "UTC"
                if time_zone_set:
                    connection.execute("SET TIME ZONE 'UTC'")
                row = connection.execute("SELECT current_setting('work_mem')").fetchone()
                connection.execute(f"SET work_mem = '{1000 + index}kB'")  # left behind
                if reset == "DISCARD ALL":
                    connection.execute("DISCARD ALL")
                elapsed = time.perf_counter() - started
                with lock:
                    times.append(elapsed)
                    counts["foreign"] += row is not None and row[0] != DEFAULT_WORK_MEM
                    counts["time_zone_set"] += time_zone_set

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    total = CLIENTS * REQUESTS
    times.sort()
    return {
        "rps": total / wall,
        "median_ms": statistics.median(times) * 1000,
        "p99_ms": times[int(len(times) * 0.99)] * 1000,
        "transactions_per_request": (bouncer.stats("app")["total_xact_count"] - before) / total,
        "foreign_work_mem": counts["foreign"] / total,
        "time_zone_set": counts["time_zone_set"] / total,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    password = secrets.token_urlsafe(18)
    with PostgresServer(max_connections=20, settings={"timezone": SERVER_TIME_ZONE}) as server:
        server.create_role("app", password)
        server.create_database("app", owner="app")
        with PgBouncer.for_server(
            server, {"app": "app"}, {"app": password}, default_pool_size=SERVER_CONNECTIONS
        ) as bouncer:
            print(
                f"{CLIENTS} clients x {REQUESTS} requests, PgBouncer transaction mode, "
                f"{SERVER_CONNECTIONS} server connections"
            )
            for round_number in range(1, args.rounds + 1):
                for reset in RESETS:
                    bouncer.restart()  # every round starts from fresh server connections
                    figures = run(bouncer, reset)
                    print(
                        f"round {round_number} {reset:11}  {figures['rps']:6.0f} req/s  "
                        f"median {figures['median_ms']:5.2f} ms  p99 {figures['p99_ms']:5.1f} ms  "
                        f"{figures['transactions_per_request']:.2f} transactions/request  "
                        f"another client's work_mem seen by {figures['foreign_work_mem']:.0%}  "
                        f"SET TIME ZONE again in {figures['time_zone_set']:.0%}",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
