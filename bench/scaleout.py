"""The connection budget scaled out: more dynos than the server has connections (issue 12).

DYNOS gunicorn servers of the sample app stand for web dynos of one app
(gthread WORKERS x THREADS each), against one PostgreSQL with
max_connections=20 (17 for the app: 3 are reserved for superusers), as an
Essential plan. One setup at a time, each on a database of its own:

- a: no pool (CONN_MAX_AGE=0): a login to the server per request;
- c: djpool straight to the server, POOL_SIZE=4: the formation wants
  DYNOS x WORKERS x 4 = 48 server connections;
- c-fit: the same with POOL_SIZE=1, which fits (12 connections): what
  lowering POOL_SIZE instead of adding a pooler gives;
- d-txn: one server-side PgBouncer in transaction mode (default_pool_size=15,
  TLS and SCRAM on both hops, as Heroku's Connection Pooling), the app
  without djpool, its connections persistent with health checks (setup d-txn
  of the main benchmark: CONN_MAX_AGE=600, as with heroku-buildpack-pgbouncer);
- c+d: djpool through that PgBouncer (POOL_SIZE=4, POOL_TRANSACTION_POOLER=1).

Load: one wrk per dyno, all at once, CONNECTIONS_PER_DYNO connections each
with ``Connection: close`` (a new connection per request, as from Heroku's
router), on the budget scenario's path (a query holding its connection
50 ms). Reported per setup: req/s (sum over the dynos), p99 (the worst
dyno's), errors (HTTP >= 400 and socket errors), peak server connections
(sampled every 25 ms), logins to the server and to PgBouncer during the run.

    .venv/bench/bin/python bench/scaleout.py [--quick] [--dynos 6]
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import report
from harness import BenchApp, ConnectionSampler, WrkResult, app_env, run_wrk
from run import APP_ROLE, Stage, _error_lines, _wait_drained
from setups import BUDGET_PATH, BY_KEY, Setup
from support.pgbouncer import PgBouncer

DYNOS = 6
WORKERS = 2
THREADS = 4
POOL_SIZE = 4
MAX_CONNECTIONS = 20
PGBOUNCER_POOL_SIZE = 15
CONNECTIONS_PER_DYNO = 8  # wrk connections: 48 in all, as many as the dynos' threads

SETUPS: tuple[Setup, ...] = (
    BY_KEY["a"],
    replace(BY_KEY["c"], env={**BY_KEY["c"].env, "POOL_SIZE": str(POOL_SIZE)}),
    replace(
        BY_KEY["c"],
        key="c-fit",
        label="djpool straight to the server, POOL_SIZE=1 (the formation fits)",
        env={**BY_KEY["c"].env, "POOL_SIZE": "1"},
    ),
    BY_KEY["d-txn"],
    Setup(
        "c+d",
        "djpool through a server-side PgBouncer (transaction mode)",
        shim=True,
        env={
            "APP_CONN_MAX_AGE": "0",
            "POOL_SIZE": str(POOL_SIZE),
            "POOL_TRANSACTION_POOLER": "1",
        },
        pgbouncer="transaction",
    ),
)


class Formation:
    """One setup's dynos (and the PgBouncer they share) on a stage."""

    def __init__(self, stage: Stage, setup: Setup, dynos: int) -> None:
        self.stage = stage
        self.setup = setup
        self.bouncer: PgBouncer | None = None
        if setup.pgbouncer:
            self.bouncer = PgBouncer(
                server_host=stage.server.host,
                server_port=stage.db_port,
                server_ca_file=stage.server.ca_cert_path,
                databases={setup.database: setup.database},
                users={APP_ROLE: stage.password},
                pool_mode=setup.pgbouncer,
                default_pool_size=PGBOUNCER_POOL_SIZE,
                max_client_conn=dynos * WORKERS * THREADS * 2,
            )
        self.apps = [
            BenchApp(env={}, shim=setup.shim, workers=WORKERS, threads=THREADS, start_timeout=120)
            for _ in range(dynos)
        ]

    def start(self) -> Formation:
        name = f"scale-{self.setup.key}"
        if self.bouncer is not None:
            self.bouncer.start()
            url = self.bouncer.url(self.setup.database, APP_ROLE, application_name=name)
        else:
            url = self.stage.server.url(
                self.setup.database,
                APP_ROLE,
                port=self.stage.db_port,
                sslmode="require",
                application_name=name,
            )
        for app in self.apps:
            app.env = app_env({"DATABASE_URL": url, **self.setup.env}, shim=self.setup.shim)
            app.start()
        return self

    def client_logins(self) -> int:
        return self.bouncer.client_logins(self.setup.database) if self.bouncer else 0

    def stop(self) -> None:
        for app in self.apps:
            app.stop()
        if self.bouncer is not None:
            self.bouncer.close()


def drive(formation: Formation, seconds: float) -> list[WrkResult]:
    """One wrk per dyno, all at once."""
    with ThreadPoolExecutor(len(formation.apps)) as pool:
        runs = [
            pool.submit(
                run_wrk,
                app.base_url + BUDGET_PATH,
                seconds,
                CONNECTIONS_PER_DYNO,
                timeout_s=5,
                keepalive=False,
            )
            for app in formation.apps
        ]
        return [run.result() for run in runs]


def measure(
    stage: Stage, sampler: ConnectionSampler, formation: Formation, seconds: float, warmup: float
) -> dict[str, Any]:
    database = formation.setup.database
    if warmup > 0:
        drive(formation, warmup)
    server_before = stage.server.connections_opened(user=APP_ROLE, database=database)
    clients_before = formation.client_logins()
    sampler.reset()
    results = drive(formation, seconds)
    requests = sum(result.requests for result in results)
    errors = sum(result.errors for result in results)
    socket_errors = sum(result.errors - result.status for result in results)
    return {
        "rps": sum(result.rps for result in results),
        "p99_ms": max(result.p99_us for result in results) / 1000,
        "requests": requests,
        "errors": errors,
        "attempts": requests + socket_errors,
        "peak_connections": sampler.peak(database),
        "server_logins": stage.server.connections_opened(user=APP_ROLE, database=database)
        - server_before,
        "pgbouncer_logins": formation.client_logins() - clients_before,
    }


def run_scale_out(
    seconds: float, warmup: float, rtt_ms: float = 0.0, dynos: int = DYNOS
) -> dict[str, Any]:
    """Every setup of SETUPS in turn on one stage; their figures and the plan."""
    stage = Stage(max_connections=MAX_CONNECTIONS, rtt_ms=rtt_ms).start(list(SETUPS))
    rows = []
    try:
        with ConnectionSampler(stage.server) as sampler:
            for setup in SETUPS:
                formation = Formation(stage, setup, dynos)
                try:
                    formation.start()
                    figures = measure(stage, sampler, formation, seconds, warmup)
                    logs = "\n".join(app.log_text() for app in formation.apps)
                    figures["log_lines"] = _error_lines(logs)
                except Exception as error:  # noqa: BLE001 - a setup that cannot start is a result
                    figures = {"failed": f"{type(error).__name__}: {error}"[:400]}
                finally:
                    formation.stop()
                    _wait_drained(stage, setup.database)
                figures["setup"] = setup.key
                rows.append(figures)
                print(f"       scale-out {setup.key:6} " + describe(figures), flush=True)
    finally:
        stage.close()
    return {
        "plan": {
            "dynos": dynos,
            "workers": WORKERS,
            "threads": THREADS,
            "pool_size": POOL_SIZE,
            "max_connections": MAX_CONNECTIONS,
            "pgbouncer_pool_size": PGBOUNCER_POOL_SIZE,
            "connections": dynos * CONNECTIONS_PER_DYNO,
            "seconds": seconds,
            "path": BUDGET_PATH,
        },
        "setups": {setup.key: setup.label for setup in SETUPS},
        "rows": rows,
    }


def describe(figures: dict[str, Any]) -> str:
    if "failed" in figures:
        return str(figures["failed"])
    return (
        f"{figures['rps']:8.1f} req/s  p99 {figures['p99_ms']:6.0f} ms  "
        f"errors {figures['errors']} of {figures['attempts']}  "
        f"peak conns {figures['peak_connections']}  logins: server "
        f"{figures['server_logins']}, PgBouncer {figures['pgbouncer_logins']}"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="the connection budget, scaled out")
    parser.add_argument("--quick", action="store_true", help="3 s runs instead of 5 s")
    parser.add_argument("--dynos", type=int, default=DYNOS)
    parser.add_argument("--rtt", type=float, default=0.0, metavar="MS")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    seconds = 3.0 if args.quick else 5.0
    print(f"-----> Scale-out: {args.dynos} dynos, max_connections={MAX_CONNECTIONS}", flush=True)
    results = run_scale_out(seconds, warmup=1.0, rtt_ms=args.rtt, dynos=args.dynos)
    print()
    print(report.scale_out_table({"scale_out": results}))
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
