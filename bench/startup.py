"""What djpool costs outside the pool's real work: interpreter start, and one checkout+checkin.

(a) Interpreter start: ``python -c pass`` many times, interleaved, bare and
    with the shim on PYTHONPATH (without DATABASE_URL the shim only runs the
    app's own sitecustomize; with it, it validates the config and registers
    the import hook). Also the first import of Django's PostgreSQL backend,
    where the patch is applied (and SQLAlchemy imported), with and without
    the shim. Medians in milliseconds.
(b) Per request: one process loops over what a request does with the
    database (close_old_connections, one ``SELECT 1``, close_old_connections)
    with the shim (CONN_MAX_AGE=0: checkout + checkin every request) and with
    a persistent connection that is never checked or closed (the ceiling).
    The difference is what the pool costs per request. Two more rows locate
    it: the persistent connection plus one ``DISCARD ALL`` (the reset's round
    trip alone), and no pooling at all (a new TLS + SCRAM connection each time).

    .venv/bench/bin/python bench/startup.py [--quick] [--json]

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


def time_start(python: str, code: str, env: dict[str, str]) -> float:
    """Wall time of one interpreter run in milliseconds (fork+exec included)."""
    import time

    started = time.perf_counter()
    subprocess.run(
        [python, "-c", code],
        env=env,
        check=True,
        timeout=60,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return (time.perf_counter() - started) * 1000


def interpreter_start(python: str, url: str, runs: int) -> dict[str, float]:
    variants = {
        "bare: python -c pass": ("pass", _env({}, shim=False)),
        "shim, no DATABASE_URL": ("pass", _env({}, shim=True)),
        "shim, DATABASE_URL set": ("pass", _env({"DATABASE_URL": url}, shim=True)),
        "import Django's backend, no shim": (
            IMPORT_BACKEND,
            _env({"DATABASE_URL": url}, shim=False),
        ),
        "import Django's backend, shim (patch applied)": (
            IMPORT_BACKEND,
            _env({"DATABASE_URL": url}, shim=True),
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for code, env in variants.values():  # warm the page cache once
        time_start(python, code, env)
    for _ in range(runs):
        for name, (code, env) in variants.items():
            samples[name].append(time_start(python, code, env))
    return {name: statistics.median(values) for name, values in samples.items()}


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
    args = parser.parse_args(argv)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if args.json else print
    python = str(bench_python())
    runs = 8 if args.quick else 30
    repeats, iterations, batches = (1, 300, 3) if args.quick else (3, 1000, 5)
    with PostgresServer() as server:
        server.create_role("app", secrets.token_urlsafe(18))
        server.create_database("app", owner="app")
        url = server.url("app", "app", sslmode="require", application_name="bench-startup")
        say(f"       interpreter start: {runs} interleaved runs of each variant")
        start_ms = interpreter_start(python, url, runs)
        bare = start_ms["bare: python -c pass"]
        for name, value in start_ms.items():
            say(f"       {name:48} {value:7.1f} ms  ({value - bare:+.1f} ms vs bare)")
        say(
            f"       per request: {repeats} processes x {batches} batches x {iterations} "
            "requests per variant, interleaved"
        )
        request = per_request(python, url, default_variants(iterations), repeats, batches)
        print_per_request(say, request, "persistent connection (ceiling)")
    if args.json:
        named = {
            key.split(":")[0] if key.startswith("bare") else key: value
            for key, value in start_ms.items()
        }
        print(json.dumps({"runs": runs, "start_ms": named, "request": request}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
