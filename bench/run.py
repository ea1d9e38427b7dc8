"""``make bench``: djpool against every alternative, side by side, in one run.

The same sample app (tests/app) under gunicorn gthread, the same local
PostgreSQL set up like Heroku Postgres (TLS only, scram-sha-256), driven by
wrk on 127.0.0.1. Every setup's app server runs for the whole benchmark (each
on a database of its own), and the measured runs are interleaved: each round
runs every setup once per workload with the ceiling g before, between and
after them (round_order), the others in a rotated order from round to round;
the figures are medians over rounds, the ratios medians of each run against
the g runs beside it. Then the connection-budget
scenario: a server with max_connections=20 and an app with more threads than
that, then the same server behind 6 dynos (bench/scaleout.py: no pool,
djpool, PgBouncer, djpool through PgBouncer). Timings are printed, never
asserted.

    .venv/bench/bin/python bench/run.py            # the full run (about 10 minutes)
    .venv/bench/bin/python bench/run.py --quick    # 1 short round, to try things
    .venv/bench/bin/python bench/run.py --rtt 1    # database 1 ms away (delay proxy)
    .venv/bench/bin/python bench/run.py --docs     # also rewrite docs/benchmark.md's tables

Results go to bench/out/ (JSON and the chart); --docs also updates
docs/benchmark.md (between its result markers) and docs/benchmark.png.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import (
    APP_DIR,
    BenchApp,
    BuildpackPgBouncer,
    ConnectionSampler,
    DelayProxyProcess,
    PostgresServer,
    app_env,
    bench_python,
    machine,
    measure_rtt_ms,
    postmaster_pid,
    run_wrk,
    tree_cpu_seconds,
    versions,
)
from setups import BUDGET_PATH, CEILING, WORKLOADS, Setup, select, variant_of_c

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
APP_ROLE = "app"
SEEDED_ITEMS = 1000


@dataclass
class Plan:
    """How long and how hard: the knobs of one run."""

    seconds: float
    warmup: float
    rounds: int
    workers: int
    threads: int
    connections: int
    budget_seconds: float
    budget_max_connections: int
    budget_workers: int
    budget_threads: int
    budget_connections: int
    rtt_ms: float


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    return Plan(
        seconds=args.seconds or (2.0 if quick else 3.0),
        warmup=args.warmup if args.warmup is not None else 0.5,
        rounds=args.rounds or (1 if quick else 4),
        workers=2,
        threads=4,
        connections=args.connections,
        budget_seconds=3.0 if quick else 5.0,
        budget_max_connections=20,
        budget_workers=3,
        budget_threads=8,
        budget_connections=32,
        rtt_ms=args.rtt,
    )


# -- one environment: server (+ proxy) + databases ---------------------------------


class Stage:
    """A PostgreSQL with one database per setup, optionally behind the delay proxy."""

    def __init__(self, max_connections: int, rtt_ms: float) -> None:
        self.server = PostgresServer(max_connections=max_connections)
        self.rtt_ms = rtt_ms
        self.proxy: DelayProxyProcess | None = None
        self.password = secrets.token_urlsafe(18)
        self.measured_rtt_ms: float | None = None

    def start(self, setups: list[Setup]) -> Stage:
        self.server.start()
        self.server.create_role(APP_ROLE, self.password, createdb=True)
        self.server.create_database("bench_template", owner=APP_ROLE)
        env = {"DATABASE_URL": self.server.url("bench_template", APP_ROLE, sslmode="require")}
        for command in (["migrate", "--no-input"], ["seed_items", str(SEEDED_ITEMS)]):
            done = subprocess.run(
                [str(bench_python()), str(APP_DIR / "manage.py"), *command],
                cwd=APP_DIR,
                env=_clean_env(app_env(env, shim=False)),
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"manage.py {' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
                )
        self.server.close_admin_connections()
        for setup in setups:
            self.server.query(
                f'CREATE DATABASE "{setup.database}" TEMPLATE bench_template OWNER "{APP_ROLE}"'
            )
        if self.rtt_ms > 0:
            self.proxy = DelayProxyProcess(self.server.host, self.server.port, self.rtt_ms).start()
            self.measured_rtt_ms = measure_rtt_ms("127.0.0.1", self.proxy.port)
        return self

    @property
    def db_port(self) -> int:
        """Where apps and PgBouncer reach the database: the proxy if there is one."""
        return self.proxy.port if self.proxy else int(self.server.port or 0)

    def direct_url(self, setup: Setup) -> str:
        return self.server.url(
            setup.database,
            APP_ROLE,
            port=self.db_port,
            sslmode="require",
            application_name=f"bench-{setup.key}",
        )

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        self.server.close()


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    import os

    keep = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("POOL_", "DJPOOL_", "APP_", "BENCH_", "PG"))
        and key not in ("PYTHONPATH", "DATABASE_URL", "DJANGO_SETTINGS_MODULE", "VIRTUAL_ENV")
    }
    return {**keep, **extra}


class Deployment:
    """One setup's app server (and its PgBouncer) on a stage."""

    def __init__(
        self,
        stage: Stage,
        setup: Setup,
        workers: int,
        threads: int,
        pool_budget: int,
        worker_connections: int | None = None,
    ) -> None:
        self.stage = stage
        self.setup = setup
        self.bouncer: BuildpackPgBouncer | None = None
        if setup.pgbouncer:
            self.bouncer = BuildpackPgBouncer(
                server_host=stage.server.host,
                server_port=stage.db_port,
                databases={"db1": setup.database},
                user=APP_ROLE,
                password=stage.password,
                pool_mode=setup.pgbouncer,
                default_pool_size=pool_budget,
            )
        extra = (
            [] if worker_connections is None else ["--worker-connections", str(worker_connections)]
        )
        self.app = BenchApp(
            env={},
            shim=setup.shim,
            workers=workers,
            threads=threads,
            start_timeout=90,
            extra_args=extra,
        )
        self.workers = workers

    def start(self) -> Deployment:
        if self.bouncer is not None:
            self.bouncer.start()
            url = self.bouncer.database_url("db1")
        else:
            url = self.stage.direct_url(self.setup)
        self.app.env = app_env({"DATABASE_URL": url, **self.setup.env}, shim=self.setup.shim)
        self.app.start()
        return self

    def url(self, path: str) -> str:
        return self.app.base_url + path

    def cpu_seconds(self) -> float:
        """CPU used so far by gunicorn (master and workers) and this setup's PgBouncer."""
        total = tree_cpu_seconds(self.app.master_pid)
        if self.bouncer is not None and self.bouncer.process is not None:
            total += tree_cpu_seconds(self.bouncer.process.pid)
        return total

    def stop(self) -> None:
        self.app.stop()
        if self.bouncer is not None:
            self.bouncer.close()


# -- measuring -----------------------------------------------------------------------


def measure(
    stage: Stage,
    sampler: ConnectionSampler,
    deployment: Deployment,
    path: str,
    seconds: float,
    warmup: float,
    connections: int,
    timeout_s: int = 10,
    keepalive: bool = True,
) -> dict[str, Any]:
    """One measured wrk run after a short warm-up; what wrk and the server saw."""
    url = deployment.url(path)
    if warmup > 0:
        run_wrk(url, warmup, connections, timeout_s=timeout_s, keepalive=keepalive)
    database = deployment.setup.database
    opened_before = stage.server.connections_opened(database=database)
    postmaster = postmaster_pid(stage.server)
    cpu_before = deployment.cpu_seconds(), tree_cpu_seconds(postmaster)
    sampler.reset()
    result = run_wrk(url, seconds, connections, timeout_s=timeout_s, keepalive=keepalive)
    cpu_after = deployment.cpu_seconds(), tree_cpu_seconds(postmaster)
    peak = sampler.peak(database)
    opened = stage.server.connections_opened(database=database) - opened_before
    served = max(result.requests, 1)
    app_cpu = (cpu_after[0] - cpu_before[0]) / served * 1e6
    db_cpu = (cpu_after[1] - cpu_before[1]) / served * 1e6
    return {
        "rps": result.rps,
        "p50_ms": result.p50_us / 1000,
        "p90_ms": result.p90_us / 1000,
        "p99_ms": result.p99_us / 1000,
        "requests": result.requests,
        "errors": result.errors,
        "status_errors": result.status,
        "socket_errors": result.errors - result.status,
        "peak_connections": peak,
        "connections_opened": opened,
        "app_cpu_us": app_cpu,
        "db_cpu_us": db_cpu,
    }


def run_main(plan: Plan, setups: list[Setup], workloads: list[str]) -> dict[str, Any]:
    """Every setup up at once; rounds of interleaved measured runs."""
    stage = Stage(max_connections=200, rtt_ms=plan.rtt_ms).start(setups)
    deployments: list[Deployment] = []
    runs: list[dict[str, Any]] = []
    try:
        for setup in setups:
            print(f"       starting {setup.key}: {setup.label}", flush=True)
            deployments.append(
                Deployment(
                    stage,
                    setup,
                    plan.workers,
                    plan.threads,
                    pool_budget=plan.workers * 5,
                    worker_connections=worker_share(plan.connections, plan.workers),
                ).start()
            )
        with ConnectionSampler(stage.server) as sampler:
            for round_number in range(plan.rounds):
                for workload in workloads:
                    for slot, deployment in enumerate(round_order(deployments, round_number)):
                        figures = measure(
                            stage,
                            sampler,
                            deployment,
                            WORKLOADS[workload],
                            plan.seconds,
                            plan.warmup,
                            plan.connections,
                        )
                        figures.update(
                            setup=deployment.setup.key,
                            workload=workload,
                            round=round_number + 1,
                            slot=slot,
                        )
                        runs.append(figures)
                        print(
                            f"       round {round_number + 1} {workload:6} "
                            f"{deployment.setup.key:6} {figures['rps']:8.1f} req/s  "
                            f"p99 {figures['p99_ms']:7.2f} ms  errors {figures['errors']}"
                            f"  CPU/req {figures['app_cpu_us']:.0f}+{figures['db_cpu_us']:.0f} µs"
                            f"  peak conns {figures['peak_connections']}"
                            f"  opened {figures['connections_opened']}",
                            flush=True,
                        )
        found_versions = versions(stage.server)
        timezone = stage.server.query("SHOW TimeZone")[0][0]
        return {
            "runs": runs,
            "versions": found_versions,
            "server_timezone": timezone,
            "measured_rtt_ms": stage.measured_rtt_ms,
        }
    finally:
        for deployment in deployments:
            deployment.stop()
        stage.close()


def worker_share(connections: int, workers: int) -> int:
    """Each gunicorn worker's cap on open connections: wrk's keep-alive ones, dealt evenly.

    wrk opens its connections at once and keeps them; uncapped, whichever
    worker wins the accept race takes them, and a run that dealt all 8 to one
    process measured half the req/s of a 4/4 run (seen with ss). Capped at
    connections / workers, the split is even every run. (gunicorn warns that
    no keep-alive connections can be handled when the cap equals --threads;
    gunicorn 27's gthread worker keeps them alive all the same.)
    """
    return max(1, -(-connections // workers))


def round_order(deployments: list[Deployment], round_number: int) -> list[Deployment]:
    """One round's runs: the ceiling g before, between and after all the others.

    The shared machine's speed changes in steps of seconds to minutes (other
    tenants), by up to 2x. So every setup is compared with the g runs just
    before and after it (report.paired), and the others' order rotates and
    reverses from round to round.
    """
    ceiling = [d for d in deployments if d.setup.key == CEILING]
    others = [d for d in deployments if d.setup.key != CEILING]
    if others:
        shift = round_number % len(others)
        others = others[shift:] + others[:shift]
        if round_number % 2:
            others.reverse()
    if not ceiling:
        return others
    order = ceiling[:]
    for deployment in others:
        order += [deployment, ceiling[0]]
    return order


def run_budget(plan: Plan, setups: list[Setup]) -> list[dict[str, Any]]:
    """max_connections=20 (3 reserved for superusers), 3 workers x 8 threads; one at a time."""
    stage = Stage(max_connections=plan.budget_max_connections, rtt_ms=plan.rtt_ms).start(setups)
    results = []
    try:
        with ConnectionSampler(stage.server) as sampler:
            for setup in setups:
                deployment = Deployment(
                    stage,
                    setup,
                    plan.budget_workers,
                    plan.budget_threads,
                    pool_budget=plan.budget_workers * 5,
                )
                try:
                    deployment.start()
                    figures = measure(
                        stage,
                        sampler,
                        deployment,
                        BUDGET_PATH,
                        plan.budget_seconds,
                        plan.warmup,
                        plan.budget_connections,
                        timeout_s=5,
                        keepalive=False,
                    )
                    figures["log_lines"] = _error_lines(deployment.app.log_text())
                except Exception as error:  # noqa: BLE001 - a setup that cannot start is a result
                    figures = {"failed": f"{type(error).__name__}: {error}"[:400]}
                finally:
                    deployment.stop()
                    _wait_drained(stage, setup.database)
                figures["setup"] = setup.key
                results.append(figures)
                print(
                    f"       budget {setup.key:6} "
                    + (
                        f"{figures['rps']:8.1f} req/s  errors {figures['errors']}"
                        f" of {figures['requests'] + figures['socket_errors']}"
                        f"  peak conns {figures['peak_connections']}"
                        if "rps" in figures
                        else figures["failed"]
                    ),
                    flush=True,
                )
    finally:
        stage.close()
    return results


def _wait_drained(stage: Stage, database: str, timeout: float = 20.0) -> None:
    """Wait until the server has no connection to ``database`` left (its slots are free)."""
    deadline = time.monotonic() + timeout
    while stage.server.backends(datname=database) and time.monotonic() < deadline:
        time.sleep(0.05)


def _error_lines(log: str, limit: int = 3) -> list[str]:
    """The first distinct database errors the app logged, else its first error lines."""
    seen: list[str] = []
    for wanted in (("FATAL", "OperationalError", "too many"), ("Error",)):
        for line in log.splitlines():
            if any(word in line for word in wanted) and not line.startswith("Traceback"):
                text = line.strip()[:200]
                if text not in seen:
                    seen.append(text)
                if len(seen) >= limit:
                    return seen
        if seen:
            return seen
    return seen


def run_startup(quick: bool) -> dict[str, Any] | None:
    """bench/startup.py in the bench venv; its JSON summary."""
    command = [str(bench_python()), str(BENCH_DIR / "startup.py"), "--json"]
    if quick:
        command.append("--quick")
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    sys.stdout.write(done.stderr)
    if done.returncode != 0:
        print(f" !     bench/startup.py failed ({done.returncode}):\n{done.stdout}", flush=True)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="djpool's benchmark (see bench/run.py)")
    parser.add_argument("--quick", action="store_true", help="one short round, to try things")
    parser.add_argument(
        "--rtt",
        type=float,
        default=0.0,
        metavar="MS",
        help="route database traffic through a proxy adding MS ms per round trip",
    )
    parser.add_argument("--seconds", type=float, default=0.0, help="length of a measured run")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up before each run")
    parser.add_argument("--rounds", type=int, default=0, help="interleaved rounds")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections")
    parser.add_argument("--setups", default="", help="comma-separated subset, e.g. a,c,g")
    parser.add_argument("--workloads", default="items,items3")
    parser.add_argument("--no-budget", action="store_true", help="skip the connection budget")
    parser.add_argument(
        "--no-scale-out", action="store_true", help="skip the budget scaled out to 6 dynos"
    )
    parser.add_argument("--no-startup", action="store_true", help="skip bench/startup.py")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=TREE",
        help="also run c with TREE/shim (e.g. a tree made by bench/compare_trees.py)",
    )
    parser.add_argument(
        "--docs",
        action="store_true",
        help="rewrite docs/benchmark.md's result sections and docs/benchmark.png",
    )
    args = parser.parse_args(argv)

    import report

    plan = make_plan(args)
    setups = select(args.setups) + [variant_of_c(spec) for spec in args.variant]
    workloads = [name.strip() for name in args.workloads.split(",") if name.strip()]
    command = "make bench" if not argv else "make bench BENCH_ARGS=" + shlex.quote(" ".join(argv))
    started = time.monotonic()
    where = machine()  # load average as the run starts
    print("-----> Machine: " + json.dumps(where), flush=True)
    print(
        f"-----> Side by side: {len(setups)} setups x {len(workloads)} workloads x "
        f"{plan.rounds} rounds of {plan.seconds:g} s (+{plan.warmup:g} s warm-up), "
        f"gunicorn gthread {plan.workers}x{plan.threads}, wrk -c {plan.connections}"
        + (f", database RTT +{plan.rtt_ms:g} ms" if plan.rtt_ms else ""),
        flush=True,
    )
    main_results = run_main(plan, setups, workloads)
    budget = []
    if not args.no_budget:
        print(
            f"-----> Connection budget: max_connections={plan.budget_max_connections}, "
            f"gunicorn {plan.budget_workers}x{plan.budget_threads}, "
            f"wrk -c {plan.budget_connections}",
            flush=True,
        )
        budget = run_budget(plan, setups)
    scale_out = None
    if not args.no_budget and not args.no_scale_out:
        import scaleout

        print(
            f"-----> Connection budget scaled out: {scaleout.DYNOS} dynos, "
            f"max_connections={scaleout.MAX_CONNECTIONS} (bench/scaleout.py)",
            flush=True,
        )
        scale_out = scaleout.run_scale_out(plan.budget_seconds, plan.warmup, plan.rtt_ms)
    startup = None
    if not args.no_startup:
        print("-----> Startup and per-request overhead (bench/startup.py)", flush=True)
        startup = run_startup(args.quick)
    code = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    results = {
        "code": code or "?",
        "command": command,
        "plan": asdict(plan),
        "machine": where,
        "setups": {setup.key: setup.label for setup in setups},
        "budget": budget,
        "scale_out": scale_out,
        "startup": startup,
        "elapsed_s": round(time.monotonic() - started, 1),
        **main_results,
    }
    OUT_DIR.mkdir(exist_ok=True)
    saved = json.dumps(results, indent=2) + "\n"
    (OUT_DIR / "results.json").write_text(saved)
    (OUT_DIR / time.strftime("results-%Y%m%d-%H%M%S.json")).write_text(saved)
    text = report.render(results)
    print()
    print(text)
    report.chart(results, OUT_DIR / "benchmark.png")
    if args.docs:
        report.update_docs(results, REPO / "docs" / "benchmark.md", REPO / "docs")
    print(
        f"\n-----> Done in {results['elapsed_s']:.0f} s; results in "
        f"{(OUT_DIR / 'results.json').relative_to(REPO)}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
