"""What watching the pool costs a checkout: checkout+checkin cycles with and without it.

Issue 13's budget: the checkout+checkin cycle must not grow by more than 5 µs
when the pool is watched. Each run is a process of its own that builds one
djpool pool (one connection, over TLS to a throwaway PostgreSQL set up like
Heroku Postgres), warms it, then times CYCLES checkouts and checkins (the
checkin's DISCARD ALL and the next checkout's read of its answer included):

    bare     SQLAlchemy's QueuePool.connect()/close() under djpool's events,
             without djpool's checkout (no wait timing, no waiting-thread gauge)
    off      djpool's Pool.checkout(): what every request pays, counters included
    watched  as off, plus the l2met reporter thread (interval 1 s, the shortest a
             user can set) and the OpenTelemetry instruments, collected every
             second by an SDK reader in another thread

Runs are interleaved (bare, off, watched, bare, ...) so that the machine's
drift hits all three alike; the report gives each variant's median µs per
cycle and the medians of the paired differences. Usage (needs the venv with
OpenTelemetry's SDK, tests/requirements/otel-dj52-psycopg3.txt)::

    .venv/stacks/otel-dj52-psycopg3/bin/python bench/stats_overhead.py [--rounds 9]
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
CYCLES = 3000
WARMUP = 300
BUDGET_US = 5.0
CLOCKS = ("wall", "cpu")


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


def watch(pool: Any) -> tuple[Any, Any]:
    """Start what a watched process runs: the reporter and OpenTelemetry, read every second."""
    from opentelemetry import metrics as api
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from djpool import metrics, otel

    def stats(reset_waits: bool) -> dict[str, Any]:
        return {"alias": "default", "database": "app", "host": "", **pool.stats(reset_waits)}

    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the run
    reporter = metrics.Reporter(
        1, None, read=lambda: [stats(True)], write=lambda line: print(line, file=devnull)
    )
    reporter.start()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    otel.Instruments(
        provider.get_meter("djpool"),
        api.Observation,
        read=lambda: [(stats(False), pool.counters.waits)],
    )

    def collect() -> None:
        while True:
            time.sleep(1)
            reader.get_metrics_data()

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    return reporter, reader


def background_us(reporter: Any, reader: Any, pool: Any, calls: int = 200) -> dict[str, float]:
    """µs of one report and of one OpenTelemetry collection, with a full window of waits.

    What the watching threads do once per interval, timed directly: spread
    over the checkouts of that interval it is their whole cost per cycle.
    """
    timings = {}
    for name, work in (("report", reporter.report), ("collect", reader.get_metrics_data)):
        total = 0
        for _ in range(calls):
            for _ in range(1024):  # a full window of waits to sort, as under load
                pool.counters.waits.add(0.0001)
            started = time.perf_counter_ns()
            work()
            total += time.perf_counter_ns() - started
        timings[name] = total / calls / 1000
    return timings


def run_once(variant: str, params: dict[str, Any]) -> dict[str, float]:
    """µs per checkout+checkin cycle in this process: wall clock, and CPU of all its threads.

    The CPU time is the steadier figure on a busy machine (the wall clock also
    holds the server's share of the round trip) and it includes what the
    watching threads spend, so it is the cost that the budget is about.
    """
    pool = build_pool(params)
    if variant == "bare":
        connect = pool.queue_pool.connect
    else:
        connect = pool.checkout
    watching = watch(pool) if variant == "watched" else None
    for _ in range(WARMUP):
        connect().close()
    started, cpu_started = time.perf_counter_ns(), time.process_time_ns()
    for _ in range(CYCLES):
        connect().close()
    elapsed, cpu = time.perf_counter_ns() - started, time.process_time_ns() - cpu_started
    result = {"wall": elapsed / CYCLES / 1000, "cpu": cpu / CYCLES / 1000}
    if watching is not None:
        result.update(background_us(*watching, pool))
    pool.dispose()
    return result


# -- the driver ----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="runs of each variant (default 9)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "lib"))
    if args.child:  # the spec comes on stdin: no password on a command line
        spec = json.loads(sys.stdin.read())
        print(json.dumps(run_once(spec["variant"], spec["params"])))
        return 0
    if Path(sys.prefix).resolve() != PYTHON.parent.parent.resolve():
        if not PYTHON.exists():
            print(f"{PYTHON} is missing: build the otel-dj52-psycopg3 venv", file=sys.stderr)
            return 2
        return subprocess.call([str(PYTHON), __file__, *sys.argv[1:]])
    sys.path.insert(0, str(REPO / "tests"))
    from support.postgres import PostgresServer

    background: dict[str, list[float]] = {}
    results: dict[str, dict[str, list[float]]] = {
        clock: {variant: [] for variant in VARIANTS} for clock in CLOCKS
    }
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
        for round_number in range(args.rounds):
            order = VARIANTS if round_number % 2 == 0 else tuple(reversed(VARIANTS))
            for variant in order:
                spec = json.dumps({"variant": variant, "params": params})
                done = subprocess.run(
                    [sys.executable, __file__, "--child"],
                    input=spec,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    check=True,
                )
                measured = json.loads(done.stdout.splitlines()[-1])
                for clock in CLOCKS:
                    results[clock][variant].append(measured[clock])
                for name in ("report", "collect"):
                    if name in measured:
                        background.setdefault(name, []).append(measured[name])
            shown = "  ".join(
                f"{v} {results['wall'][v][-1]:.1f}/{results['cpu'][v][-1]:.1f}" for v in VARIANTS
            )
            print(f"round {round_number + 1}/{args.rounds}: µs per cycle (wall/cpu)  {shown}")
    print()
    print(f"{CYCLES} checkout+checkin cycles per run, {args.rounds} runs each, interleaved")
    growth = {}
    for clock in CLOCKS:
        print(f"{clock} clock, µs per cycle:")
        for variant in VARIANTS:
            values = results[clock][variant]
            print(
                f"  {variant:8} median {statistics.median(values):7.2f}"
                f"  (min {min(values):.2f}, max {max(values):.2f})"
            )
        for a, b in (("off", "bare"), ("watched", "off")):
            paired = [x - y for x, y in zip(results[clock][a], results[clock][b], strict=True)]
            growth[(clock, a)] = statistics.median(paired)
            print(f"  {a} - {b}: median of paired differences {growth[(clock, a)]:+.2f}")
    report_us = statistics.median(background["report"])
    collect_us = statistics.median(background["collect"])
    cycles_per_second = 1e6 / statistics.median(results["wall"]["off"])
    print(
        f"background, once per second: a report {report_us:.1f} µs, an OpenTelemetry "
        f"collection {collect_us:.1f} µs; over the {cycles_per_second:.0f} cycles a second "
        f"one connection does here: {(report_us + collect_us) / cycles_per_second:.3f} µs a cycle"
    )
    cpu_growth = growth[("cpu", "watched")]
    verdict = "within" if cpu_growth <= BUDGET_US else "OVER"
    print(
        f"watching the pool costs {cpu_growth:+.2f} µs CPU per cycle "
        f"({growth[('wall', 'watched')]:+.2f} µs wall): {verdict} the {BUDGET_US:g} µs budget"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
