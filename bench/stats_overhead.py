"""What watching the pool costs a checkout: checkout+checkin cycles with and without it.

Issue 13's budget: the checkout+checkin cycle must not grow by more than 5 µs
when the pool is watched. Each run is a process of its own with one djpool
pool (one connection, over TLS to a throwaway PostgreSQL set up like Heroku
Postgres). It times blocks of BLOCK checkouts and checkins (the checkin's
DISCARD ALL and the next checkout's read of its answer included), in turns:

    bare     SQLAlchemy's QueuePool.connect()/close() under djpool's events,
             without djpool's checkout (no wait timing, no waiting-thread gauge)
    off      djpool's Pool.checkout(): what every request pays, counters included
    watched  as off, while a thread does what the l2met reporter and an
             OpenTelemetry reader do, every second (POOL_METRICS_INTERVAL=1,
             the shortest a user can set): a report and a collection

The three turns of a triple run back to back in one process on one
connection, so the machine's drift hits them alike; a block's figure is the
CPU time of the whole process (every thread) per cycle, and its wall time.
The report gives the mean and median of the paired differences over every
triple of every run, and the background work timed directly (a report and a
collection, each with a full window of waits), spread over a second's
checkouts. Usage (needs the venv with OpenTelemetry's SDK,
tests/requirements/otel-dj52-psycopg3.txt)::

    .venv/stacks/otel-dj52-psycopg3/bin/python bench/stats_overhead.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "stacks" / "otel-dj52-psycopg3" / "bin" / "python"
VARIANTS = ("bare", "off", "watched")
BLOCK = 2000  # cycles per timed block
TRIPLES = 12  # (bare, off, watched) blocks per run
WARMUP = 300
BUDGET_US = 5.0


# -- one run (a child process) ---------------------------------------------------------------


def build_pool(params: dict[str, Any]) -> Any:
    """A djpool pool of one connection, as the runtime builds it (the one coupling point)."""
    import psycopg

    from djpool import pool as pool_module
    from djpool.config import PoolSettings

    return pool_module.build(
        PoolSettings(size=1, max_overflow=0, timeout=10.0, recycle=3600),
        "psycopg",
        # as Django opens them: autocommit, and no prepared statements (its default)
        lambda: psycopg.connect(**params, autocommit=True, prepare_threshold=None),
        name="default",
    )


class Watcher:
    """The reporter's and an OpenTelemetry reader's work, every second while switched on."""

    def __init__(self, pool: Any) -> None:
        from opentelemetry import metrics as api
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        from djpool import metrics, otel

        def stats(reset_waits: bool) -> dict[str, Any]:
            return {"alias": "default", "database": "app", "host": "", **pool.stats(reset_waits)}

        self.pool = pool
        devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the run
        self.reporter = metrics.Reporter(
            1, None, read=lambda: [stats(True)], write=lambda line: print(line, file=devnull)
        )
        self.reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[self.reader])
        otel.Instruments(
            provider.get_meter("djpool"),
            api.Observation,
            read=lambda: [(stats(False), pool.counters.waits)],
        )
        self.on = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            self.on.wait()
            time.sleep(1)
            if self.on.is_set():
                self.reporter.report()
                self.reader.get_metrics_data()

    def background_us(self, calls: int = 100) -> dict[str, float]:
        """µs of one report and of one collection, each after a full window of waits."""
        timings = {}
        for name, work in (
            ("report", self.reporter.report),
            ("collect", self.reader.get_metrics_data),
        ):
            total = 0
            for _ in range(calls):
                for _ in range(1024):  # a full window of waits, as under load
                    self.pool.counters.waits.add(0.0001)
                started = time.perf_counter_ns()
                work()
                total += time.perf_counter_ns() - started
            timings[name] = total / calls / 1000
        return timings


def run_once(params: dict[str, Any]) -> dict[str, Any]:
    """Per triple, µs per cycle of each variant: CPU of every thread, and wall."""
    pool = build_pool(params)
    watcher = Watcher(pool)
    connects = {"bare": pool.queue_pool.connect, "off": pool.checkout, "watched": pool.checkout}
    for _ in range(WARMUP):
        pool.checkout().close()
    triples = []
    for number in range(TRIPLES):
        order = VARIANTS if number % 2 == 0 else tuple(reversed(VARIANTS))
        triple = {}
        for variant in order:
            connect = connects[variant]
            if variant == "watched":
                watcher.on.set()
            started, cpu_started = time.perf_counter_ns(), time.process_time_ns()
            for _ in range(BLOCK):
                connect().close()
            cpu, wall = time.process_time_ns() - cpu_started, time.perf_counter_ns() - started
            watcher.on.clear()
            triple[variant] = {"cpu": cpu / BLOCK / 1000, "wall": wall / BLOCK / 1000}
        triples.append(triple)
    result = {"triples": triples, **watcher.background_us()}
    pool.dispose()
    return result


# -- the driver ----------------------------------------------------------------------------


def describe(name: str, values: list[float]) -> str:
    return (
        f"{name}: mean {statistics.fmean(values):+7.2f}  median {statistics.median(values):+7.2f}"
        f"  (stdev {statistics.stdev(values):.2f}, n={len(values)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="processes, each its own pool")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "lib"))
    if args.child:  # the spec comes on stdin: no password on a command line
        print(json.dumps(run_once(json.loads(sys.stdin.read()))))
        return 0
    if Path(sys.prefix).resolve() != PYTHON.parent.parent.resolve():
        if not PYTHON.exists():
            print(f"{PYTHON} is missing: build the otel-dj52-psycopg3 venv", file=sys.stderr)
            return 2
        return subprocess.call([str(PYTHON), __file__, *sys.argv[1:]])
    sys.path.insert(0, str(REPO / "tests"))
    from support.postgres import PostgresServer

    triples: list[dict[str, dict[str, float]]] = []
    background: dict[str, list[float]] = {"report": [], "collect": []}
    with PostgresServer() as server:
        server.create_role("app", "bench-" + os.urandom(8).hex())
        server.create_database("app", owner="app")
        params = {
            "host": server.host,
            "port": server.port,
            "dbname": "app",
            "user": "app",
            "password": server.password_of("app"),
            "sslmode": "require",
        }
        for run in range(args.runs):
            done = subprocess.run(
                [sys.executable, __file__, "--child"],
                input=json.dumps(params),
                capture_output=True,
                text=True,
                timeout=900,
                check=True,
            )
            result = json.loads(done.stdout.splitlines()[-1])
            triples += result["triples"]
            for name in background:
                background[name].append(result[name])
            print(f"run {run + 1}/{args.runs}: {len(result['triples'])} triples", flush=True)
    print()
    print(f"{BLOCK} checkout+checkin cycles per block, {len(triples)} (bare, off, watched) triples")
    for clock in ("cpu", "wall"):
        print(f"{clock} µs per cycle:")
        for variant in VARIANTS:
            values = [t[variant][clock] for t in triples]
            print(f"  {variant:8} median {statistics.median(values):7.2f}")
        for a, b in (("off", "bare"), ("watched", "off")):
            paired = [t[a][clock] - t[b][clock] for t in triples]
            print("  " + describe(f"{a} - {b}", paired))
    report_us = statistics.median(background["report"])
    collect_us = statistics.median(background["collect"])
    cycles_per_second = 1e6 / statistics.median(t["off"]["wall"] for t in triples)
    spread = (report_us + collect_us) / cycles_per_second
    print(
        f"background, once per interval: a report {report_us:.1f} µs, an OpenTelemetry "
        f"collection {collect_us:.1f} µs; over one connection's {cycles_per_second:.0f} "
        f"cycles a second: {spread:.3f} µs a cycle at a 1 s interval, "
        f"{spread / 60:.4f} at the default 60 s"
    )
    growth = statistics.fmean(t["watched"]["cpu"] - t["off"]["cpu"] for t in triples)
    verdict = "within" if growth <= BUDGET_US else "OVER"
    print(f"watching the pool: {growth:+.2f} µs CPU per cycle (mean): {verdict} {BUDGET_US:g} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
