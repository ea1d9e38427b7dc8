"""What djpool costs outside the pool's real work: interpreter start, and one checkout+checkin.

(a) Interpreter start: ``python -c pass`` many times, interleaved, bare and
    with the shim on PYTHONPATH (without DATABASE_URL, or with POOL_DISABLED=1,
    the shim only runs the app's own sitecustomize; with DATABASE_URL it also
    registers the import hook, and nothing else). Also the first import of
    Django's PostgreSQL backend, where djpool checks its config, imports
    SQLAlchemy and applies the patch, with and without the shim, and that
    import timed inside one process once SQLAlchemy is imported (what the
    patch adds beyond SQLAlchemy's own import). Medians in milliseconds; the
    targets are medians of paired differences, wall time with CPU time as
    a cross-check. Then memory per gunicorn worker (bench/memory.py).
(b) Per request: one process loops over what a request does with the
    database (close_old_connections, one ``SELECT 1``, close_old_connections)
    with the shim (CONN_MAX_AGE=0: checkout + checkin every request) and with
    a persistent connection that is never checked or closed (the ceiling).
    The difference is what the pool costs per request. Two more rows locate
    it: the persistent connection plus one ``DISCARD ALL`` (the reset's round
    trip alone), and no pooling at all (a new TLS + SCRAM connection each time).

    .venv/bench/bin/python bench/startup.py [--quick] [--json] [--no-memory] [--tree TREE]

It starts its own throwaway PostgreSQL (TLS, scram-sha-256) on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import SHIM_DIR, PostgresServer, bench_python  # noqa: E402

LOOP = textwrap.dedent("""
    import json, os, sys, time
    import django
    from django.conf import settings
    import dj_database_url
    max_age = os.environ["LOOP_CONN_MAX_AGE"]
    db = dj_database_url.parse(os.environ["DATABASE_URL"],
                               conn_max_age=None if max_age == "none" else int(max_age))
    settings.configure(DATABASES={"default": db}, USE_TZ=True, TIME_ZONE="UTC")
    django.setup()
    from django.db import close_old_connections, connection
    extra = [sql for sql in os.environ.get("LOOP_EXTRA_SQL", "").split("|") if sql]
    backend = []

    def request():
        close_old_connections()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
            for sql in extra:  # statements separated by "|", each its own round trip
                cursor.execute(sql)
            if not backend:
                backend.append(connection.connection.info.backend_pid)
        close_old_connections()

    def server_cpu_ns():
        # on-CPU time of the server process that served the first request (the pool
        # is LIFO and this loop single-threaded, so it serves them all when pooled)
        try:
            with open(f"/proc/{backend[0]}/schedstat") as stat:
                return int(stat.read().split()[0])
        except (OSError, IndexError, ValueError):
            return None

    iterations, batches = int(sys.argv[1]), int(sys.argv[2])
    for _ in range(min(iterations, 200)):
        request()
    results = []
    for _ in range(batches):
        server_before = server_cpu_ns()
        cpu_before = time.process_time()
        started = time.perf_counter()
        for _ in range(iterations):
            request()
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        server_after = server_cpu_ns()
        server = (None if server_before is None or server_after is None
                  or server_after < server_before else (server_after - server_before) / 1e3)
        results.append({"wall_us": wall / iterations * 1e6,
                        "client_cpu_us": cpu / iterations * 1e6,
                        "server_cpu_us": None if server is None else server / iterations})
    print(json.dumps(results))
""")

IMPORT_BACKEND = "import django.db.backends.postgresql.base"


def _env(extra: dict[str, str], shim: bool | Path) -> dict[str, str]:
    """A clean environment; ``shim`` True means this repo's shim, a Path another tree's."""
    prefixes = ("POOL_", "DJPOOL_", "APP_", "BENCH_", "PG", "LOOP_")
    # PYTHONDONTWRITEBYTECODE goes too: start-up is timed with .pyc cached.
    names = ("PYTHONPATH", "DATABASE_URL", "DJANGO_SETTINGS_MODULE", "PYTHONDONTWRITEBYTECODE")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(prefixes) and key not in names
    }
    if shim:
        env["PYTHONPATH"] = str(SHIM_DIR if shim is True else shim)
    env.update(extra)
    return env


def time_start(python: str, code: str, env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one interpreter run, in milliseconds.

    Wall time includes fork+exec and is what the targets use; CPU time is the
    cross-check on a shared machine, where waiting for a core inflates wall time.
    """
    import time

    started = time.perf_counter()
    process = subprocess.Popen(
        [python, "-c", code],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = (time.perf_counter() - started) * 1000
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{python} -c {code!r} exited with {process.returncode}")
    return wall, (usage.ru_utime + usage.ru_stime) * 1000


START_BARE = "bare: python -c pass"
START_DISABLED = "shim, DATABASE_URL set, POOL_DISABLED=1"
START_LOADED = "shim, DATABASE_URL set (hook registered)"
IMPORT_SQLALCHEMY = "import sqlalchemy, no shim"
IMPORT_BARE = "import Django's backend, no shim"
IMPORT_PATCHED = "import Django's backend, shim (patch applied)"


def interpreter_start(python: str, url: str, runs: int, shim: bool | Path = True) -> dict[str, Any]:
    """Medians of each variant's wall and CPU time, and the start-up target.

    shim_start_ms: (DATABASE_URL set) - (the same with POOL_DISABLED=1), median
        of the rounds' differences: what loading djpool at interpreter start
        costs (goal <= 1 ms).
    patch_import_4runs_ms: (backend with the shim - backend without) - (import
        sqlalchemy - bare), per round; kept for reference, the target uses
        ``patch_import`` (one process, SQLAlchemy imported first), which does
        not subtract 200 ms figures from each other.
    """
    variants = {
        START_BARE: ("pass", _env({}, shim=False)),
        "shim, no DATABASE_URL": ("pass", _env({}, shim=shim)),
        START_DISABLED: ("pass", _env({"DATABASE_URL": url, "POOL_DISABLED": "1"}, shim=shim)),
        START_LOADED: ("pass", _env({"DATABASE_URL": url}, shim=shim)),
        IMPORT_SQLALCHEMY: ("import sqlalchemy", _env({"DATABASE_URL": url}, shim=False)),
        IMPORT_BARE: (IMPORT_BACKEND, _env({"DATABASE_URL": url}, shim=False)),
        IMPORT_PATCHED: (IMPORT_BACKEND, _env({"DATABASE_URL": url}, shim=shim)),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for code, env in variants.values():  # warm the page cache (and write .pyc) once
        time_start(python, code, env)
    for _ in range(runs):
        for name, (code, env) in variants.items():
            wall, used = time_start(python, code, env)
            samples[name].append(wall)
            cpu[name].append(used)

    def shim_start(by: dict[str, list[float]]) -> float:
        pairs = zip(by[START_LOADED], by[START_DISABLED], strict=True)
        return statistics.median(loaded - disabled for loaded, disabled in pairs)

    def beyond_sqlalchemy(by: dict[str, list[float]]) -> float:
        rounds = zip(
            by[IMPORT_PATCHED], by[IMPORT_BARE], by[IMPORT_SQLALCHEMY], by[START_BARE], strict=True
        )
        return statistics.median(
            (patched - backend) - (sqlalchemy - bare)
            for patched, backend, sqlalchemy, bare in rounds
        )

    return {
        "start_ms": {name: statistics.median(values) for name, values in samples.items()},
        "start_cpu_ms": {name: statistics.median(values) for name, values in cpu.items()},
        "shim_start_ms": shim_start(samples),
        "shim_start_cpu_ms": shim_start(cpu),
        "patch_import_4runs_ms": beyond_sqlalchemy(samples),
    }


# In one process: SQLAlchemy first, then Django's backend (where the patch runs), each
# timed; with SQLAlchemy already imported, the second figure holds only what the
# patch adds (djpool's modules, dj-database-url, the config, the patch itself).
AFTER_SQLALCHEMY = (
    "import time\n"
    "import sqlalchemy\n"
    "wall, cpu = time.perf_counter(), time.process_time()\n"
    "import django.db.backends.postgresql.base\n"
    "print((time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3)\n"
)


def patch_import(python: str, url: str, runs: int, shim: bool | Path = True) -> dict[str, float]:
    """What the patch adds to importing Django's backend once SQLAlchemy is imported.

    Medians of paired differences (shim - no shim) of that import's time,
    measured inside the process, wall and CPU, in ms: the issue's "SQLAlchemy's
    own import time + 10 ms" without subtracting two 200 ms process timings.
    """
    envs = {
        "shim": _env({"DATABASE_URL": url}, shim=shim),
        "bare": _env({"DATABASE_URL": url}, shim=False),
    }
    seen: dict[str, list[tuple[float, float]]] = {name: [] for name in envs}
    for round_number in range(runs + 1):
        for name, env in envs.items():
            done = subprocess.run(
                [python, "-c", AFTER_SQLALCHEMY],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            wall, cpu = (float(value) for value in done.stdout.split()[-2:])
            if round_number:  # the first round only writes .pyc
                seen[name].append((wall, cpu))
    pairs = list(zip(seen["shim"], seen["bare"], strict=True))
    return {
        "patch_import_ms": statistics.median(s[0] - b[0] for s, b in pairs),
        "patch_import_cpu_ms": statistics.median(s[1] - b[1] for s, b in pairs),
        "backend_after_sqlalchemy_ms": statistics.median(b[0] for _, b in pairs),
    }


Variant = tuple[dict[str, str], "bool | Path", int]  # env, shim, requests per batch


def default_variants(iterations: int) -> dict[str, Variant]:
    return {
        "persistent connection (ceiling)": ({"LOOP_CONN_MAX_AGE": "none"}, False, iterations),
        "djpool checkout + checkin": ({"LOOP_CONN_MAX_AGE": "0"}, True, iterations),
        "persistent + DISCARD ALL (the reset's round trip)": (
            {"LOOP_CONN_MAX_AGE": "none", "LOOP_EXTRA_SQL": "DISCARD ALL"},
            False,
            iterations,
        ),
        "no pooling (new TLS + SCRAM connection)": (
            {"LOOP_CONN_MAX_AGE": "0"},
            False,
            max(iterations // 20, 10),
        ),
    }


def per_request(
    python: str, url: str, variants: dict[str, Variant], repeats: int, batches: int
) -> dict[str, dict[str, float | None]]:
    """Per variant: medians over batches of wall µs, client CPU µs and server CPU µs per request.

    Variants run in separate processes, interleaved ``repeats`` times.
    """
    samples: dict[str, list[dict[str, float | None]]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (extra, shim, count) in variants.items():
            done = subprocess.run(
                [python, "-c", LOOP, str(count), str(batches)],
                env=_env({"DATABASE_URL": url, **extra}, shim=shim),
                capture_output=True,
                text=True,
                timeout=600,
            )
            if done.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{done.stdout}\n{done.stderr}")
            samples[name].extend(json.loads(done.stdout.strip().splitlines()[-1]))
    summary: dict[str, dict[str, float | None]] = {}
    for name, batches_seen in samples.items():
        row: dict[str, float | None] = {}
        for key in ("wall_us", "client_cpu_us", "server_cpu_us"):
            values = [batch[key] for batch in batches_seen if batch[key] is not None]
            row[key] = statistics.median(values) if values else None
        summary[name] = row
    return summary


def print_per_request(
    say: Callable[[str], None], results: dict[str, dict[str, float | None]], base_name: str
) -> None:
    base = results[base_name]
    say(f"       {'':52} {'wall µs':>9} {'client CPU':>11} {'server CPU':>11}")
    for name, row in results.items():
        cells = []
        for key in ("wall_us", "client_cpu_us", "server_cpu_us"):
            value, ref = row[key], base[key]
            if value is None:
                cells.append("        –  ")
                continue
            delta = f" {value - ref:+4.0f}" if ref is not None and name != base_name else "     "
            cells.append(f"{value:6.0f}{delta}")
        say(f"       {name[:52]:52} " + " ".join(cells))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the human summary on stderr and one JSON line on stdout",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip bench/memory.py's part")
    parser.add_argument(
        "--tree",
        type=Path,
        default=None,
        help="time another tree's shim (TREE/shim, e.g. one of bench/compare_trees.py)",
    )
    args = parser.parse_args(argv)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if args.json else print
    python = str(bench_python())
    shim: bool | Path = True if args.tree is None else args.tree.resolve() / "shim"
    runs = 8 if args.quick else 30
    repeats, iterations, batches = (1, 300, 3) if args.quick else (3, 1000, 5)
    with PostgresServer() as server:
        server.create_role("app", secrets.token_urlsafe(18))
        server.create_database("app", owner="app")
        url = server.url("app", "app", sslmode="require", application_name="bench-startup")
        say(f"       interpreter start: {runs} interleaved runs of each variant")
        start = interpreter_start(python, url, runs, shim)
        start.update(patch_import(python, url, runs, shim))
        bare = start["start_ms"][START_BARE]
        for name, value in start["start_ms"].items():
            used = start["start_cpu_ms"][name]
            say(
                f"       {name:48} {value:7.1f} ms  ({value - bare:+.1f} ms vs bare)"
                f"  CPU {used:6.1f} ms"
            )
        say(
            f"       per request: {repeats} processes x {batches} batches x {iterations} "
            "requests per variant, interleaved"
        )
        variants = default_variants(iterations)
        if shim is not True:
            variants["djpool checkout + checkin"] = (
                {"LOOP_CONN_MAX_AGE": "0"},
                shim,
                iterations,
            )
        request = per_request(python, url, variants, repeats, batches)
        print_per_request(say, request, "persistent connection (ceiling)")
    memory = None
    if not args.no_memory:
        import memory as memory_bench
        from run import Stage
        from setups import BY_KEY

        say("       memory per gunicorn worker (bench/memory.py)")
        stage = Stage(max_connections=100, rtt_ms=0).start([BY_KEY["a"], BY_KEY["c"]])
        try:
            memory = memory_bench.measure(stage.direct_url, shim=shim)
        finally:
            stage.close()
        memory_bench.print_memory(say, memory)

    def short(by_name: dict[str, float]) -> dict[str, float]:
        return {
            key.split(":")[0] if key.startswith("bare") else key: value
            for key, value in by_name.items()
        }

    summary = {
        "runs": runs,
        "start_ms": short(start["start_ms"]),
        "start_cpu_ms": short(start["start_cpu_ms"]),
        "shim_start_ms": start["shim_start_ms"],
        "shim_start_cpu_ms": start["shim_start_cpu_ms"],
        "patch_import_ms": start["patch_import_ms"],
        "patch_import_cpu_ms": start["patch_import_cpu_ms"],
        "patch_import_4runs_ms": start["patch_import_4runs_ms"],
        "backend_after_sqlalchemy_ms": start["backend_after_sqlalchemy_ms"],
        "request": request,
        "memory": memory,
    }
    import report

    say("       targets:")
    for row in report.startup_targets(summary):
        say(f"       {row['target']:58} {row['shown']:>9}  {row['goal']:>10}  {row['result']}")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
