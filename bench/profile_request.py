"""Profile the request path of the sample app in one process: where djpool's time goes.

Calls the app's WSGI handler directly (what a gunicorn thread does, minus the
socket), single-threaded, for one setup per process:

    c  djpool (shim, CONN_MAX_AGE=0): checkout + checkin every request
    g  ceiling (CONN_MAX_AGE=None, no health checks): one connection, never closed

and prints µs per request plus a cProfile of the djpool run, restricted to the
functions on the checkout/checkin path (djpool, SQLAlchemy's pool, Django's
connect/close, psycopg's DISCARD ALL round trip). With ``--pyinstrument`` it
prints pyinstrument's call tree instead.

    .venv/bench/bin/python bench/profile_request.py [--requests N] [--path /items/]

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import APP_DIR, PostgresServer, app_env, bench_python  # noqa: E402

CHILD = textwrap.dedent("""
    import cProfile, io, json, os, pstats, sys, time
    import django
    django.setup()
    from django.core.handlers.wsgi import WSGIHandler

    handler = WSGIHandler()
    path, query = os.environ["PROFILE_PATH"], ""
    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "HTTP_HOST": "127.0.0.1",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "SERVER_PROTOCOL": "HTTP/1.1",
    }

    def start_response(status, headers, exc_info=None):
        if not status.startswith("200"):
            raise SystemExit(f"{path} answered {status}")

    def request():
        response = handler(dict(environ), start_response)
        b"".join(response)
        response.close()  # sends request_finished: close_old_connections

    def backend_pid():
        # The server process behind this thread's connection: one request's worth of
        # checkout (LIFO: the same pooled connection the loop keeps getting) or the
        # persistent connection, left as a request would leave it.
        from django.db import close_old_connections, connection
        connection.ensure_connection()
        pid = connection.connection.info.backend_pid
        close_old_connections()
        if os.environ.get("APP_CONN_MAX_AGE") == "0":
            connection.close()
        return pid

    def server_cpu_ns(pid):
        try:
            with open(f"/proc/{pid}/schedstat") as stat:
                return int(stat.read().split()[0])
        except (OSError, ValueError):
            return None

    requests, batches = int(sys.argv[1]), int(sys.argv[2])
    for _ in range(300):
        request()
    pid = backend_pid()
    times, batches_seen = [], []
    for _ in range(batches):
        server_before = server_cpu_ns(pid)
        cpu_before = time.process_time()
        started = time.perf_counter()
        for _ in range(requests):
            request()
        wall = (time.perf_counter() - started) / requests * 1e6
        cpu = (time.process_time() - cpu_before) / requests * 1e6
        server_after = server_cpu_ns(pid)
        server = (None if server_before is None or server_after is None
                  else (server_after - server_before) / 1e3 / requests)
        times.append(wall)
        batches_seen.append({"wall_us": wall, "client_cpu_us": cpu, "server_cpu_us": server})
    out = {"us": times, "batches": batches_seen}
    mode = os.environ.get("PROFILE_MODE", "")
    if mode == "cprofile":
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(requests):
            request()
        profiler.disable()
        stats = pstats.Stats(profiler)
        rows = []
        for (file, line, name), (cc, nc, tt, ct, callers) in stats.stats.items():
            rows.append({"where": f"{os.path.basename(file)}:{line}:{name}", "file": file,
                         "calls": nc / requests, "tottime_us": tt / requests * 1e6,
                         "cumtime_us": ct / requests * 1e6})
        out["profile"] = rows
    elif mode == "pyinstrument":
        from pyinstrument import Profiler
        profiler = Profiler(interval=0.0001)
        profiler.start()
        for _ in range(requests):
            request()
        profiler.stop()
        out["tree"] = profiler.output_text(unicode=True, color=False, show_all=False)
    print("PROFILEJSON " + json.dumps(out))
""")

# Wall time of each step of a pooled request, measured by wrapping the functions
# (no profiler: cProfile inflates small Python calls and hides round trips).
ATTRIBUTE = textwrap.dedent("""
    import collections, functools, json, os, select, sys, time
    import django
    from django.conf import settings
    import dj_database_url
    settings.configure(DATABASES={"default": dj_database_url.parse(
        os.environ["DATABASE_URL"], conn_max_age=0)}, USE_TZ=True, TIME_ZONE="UTC")
    django.setup()
    from django.db import close_old_connections, connection
    from django.db.backends.postgresql import base
    from sqlalchemy.pool import QueuePool
    import djpool.reset

    spent, calls = collections.Counter(), collections.Counter()

    def timed(owner, name, label):
        original = getattr(owner, name)
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - started
                calls[label] += 1
        setattr(owner, name, wrapper)

    steps = [
        (base.DatabaseWrapper, "connect", "checkout: Django's connect()"),
        (base.DatabaseWrapper, "get_new_connection", "  djpool get_new_connection"),
        (QueuePool, "connect", "    SQLAlchemy QueuePool.connect (with djpool's events)"),
        (base.DatabaseWrapper, "set_autocommit", "  Django set_autocommit"),
        (base.DatabaseWrapper, "init_connection_state",
         "  Django init_connection_state (time zone, role)"),
        (base.DatabaseWrapper, "_close", "checkin: djpool _close"),
        (djpool.reset, "clean", "  reset: rollback + DISCARD ALL"),
    ]
    for owner, name, label in steps:
        timed(owner, name, label)

    def request():
        close_old_connections()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        close_old_connections()

    n = int(sys.argv[1])
    for _ in range(500):
        request()
    spent.clear(); calls.clear()
    started = time.perf_counter()
    for _ in range(n):
        request()
    out = {"request": (time.perf_counter() - started) / n * 1e6}
    out.update({label: spent[label] / n * 1e6 for _, _, label in steps})
    # the same DISCARD ALL two ways, on a connection of its own
    raw = connection.get_new_connection(connection.get_connection_params())
    raw.autocommit = True
    cursor = raw.cursor()
    for label, run in (("DISCARD ALL through a psycopg cursor", lambda: cursor.execute(
            "DISCARD ALL")), ("DISCARD ALL through libpq (pgconn)", None)):
        if run is None:
            pgconn = raw.pgconn
            def run():
                pgconn.send_query(b"DISCARD ALL")
                pgconn.flush()
                while pgconn.is_busy():
                    select.select([pgconn.socket], [], [], 5)
                    pgconn.consume_input()
                while pgconn.get_result() is not None:
                    pass
        for _ in range(200):
            run()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(n):
            run()
        out[label + " (wall)"] = (time.perf_counter() - wall) / n * 1e6
        out[label + " (client CPU)"] = (time.process_time() - cpu) / n * 1e6
    print("PROFILEJSON " + json.dumps(out))
""")

SETUPS = {
    "c": ({"APP_CONN_MAX_AGE": "0"}, True),
    "g": ({"BENCH_CONN_MAX_AGE": "none"}, False),
}

# Functions worth naming in the report: the checkout/checkin path and what it calls.
INTERESTING = (
    "djpool/",
    "sqlalchemy/pool/",
    "sqlalchemy/event/",
    "django/db/backends/base/base.py",
    "django/db/backends/postgresql/base.py",
    "django/db/__init__.py",
    "django/dispatch/dispatcher.py",
    "psycopg/connection.py",
    "psycopg/cursor.py",
    "psycopg/_connection_base.py",
    "select",
    "{method 'execute'",
    "psycopg/_preparing.py",
    "psycopg/waiting.py",
)


def run_child(
    python: str, env: dict[str, str], requests: int, batches: int, mode: str = ""
) -> dict:
    done = subprocess.run(
        [python, "-c", CHILD, str(requests), str(batches)],
        env={**env, "PROFILE_MODE": mode},
        cwd=APP_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    for line in done.stdout.splitlines():
        if line.startswith("PROFILEJSON "):
            return json.loads(line[len("PROFILEJSON ") :])
    raise RuntimeError(
        f"profile child failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
    )


def child_env(url: str, setup: str, path: str) -> dict[str, str]:
    extra, shim = SETUPS[setup]
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("POOL_", "DJPOOL_", "APP_", "BENCH_", "PG"))
        and key not in ("PYTHONPATH", "DATABASE_URL", "DJANGO_SETTINGS_MODULE")
    }
    return {**base, **app_env({"DATABASE_URL": url, "PROFILE_PATH": path, **extra}, shim=shim)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--path", default="/items/")
    parser.add_argument("--pyinstrument", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--attribute",
        action="store_true",
        help="wall time of each checkout/checkin step instead of cProfile",
    )
    args = parser.parse_args(argv)
    python = str(bench_python())
    if args.attribute:
        return attribute(python, args.requests, args.repeats)
    with PostgresServer() as server:
        server.create_role("app", secrets.token_urlsafe(18))
        server.create_database("app", owner="app")
        url = server.url("app", "app", sslmode="require", application_name="bench-profile")
        env = child_env(url, "g", args.path)
        for command in (["migrate", "--no-input"], ["seed_items", "1000"]):
            subprocess.run(
                [python, str(APP_DIR / "manage.py"), *command],
                env=env,
                cwd=APP_DIR,
                check=True,
                capture_output=True,
                timeout=300,
            )
        timings: dict[str, list[float]] = {"c": [], "g": []}
        for _ in range(args.repeats):
            for setup in ("g", "c"):
                timings[setup] += run_child(
                    python, child_env(url, setup, args.path), args.requests, args.batches
                )["us"]
        medians = {setup: statistics.median(values) for setup, values in timings.items()}
        print(
            f"{args.path} in one thread, WSGI handler called directly, "
            f"{args.repeats} x {args.batches} batches of {args.requests}:"
        )
        for setup, value in medians.items():
            print(f"  {setup}: {value:7.1f} µs per request")
        print(
            f"  c - g: {medians['c'] - medians['g']:+.1f} µs per request "
            f"(c/g throughput if CPU-bound: {medians['g'] / medians['c']:.2f})"
        )
        mode = "pyinstrument" if args.pyinstrument else "cprofile"
        profiled = {
            setup: run_child(python, child_env(url, setup, args.path), args.requests, 1, mode)
            for setup in ("c", "g")
        }
    if args.pyinstrument:
        print(profiled["c"]["tree"])
    else:
        print_profile(profiled, args.top)
    if args.json:
        args.json.write_text(json.dumps({"medians_us": medians, "profile": profiled}) + "\n")
    return 0


def attribute(python: str, requests: int, repeats: int) -> int:
    """Median over ``repeats`` processes of each step's µs per request (SELECT 1 loop)."""
    with PostgresServer() as server:
        server.create_role("app", secrets.token_urlsafe(18))
        server.create_database("app", owner="app")
        url = server.url("app", "app", sslmode="require", application_name="bench-attribute")
        env = {**child_env(url, "c", "/"), "DATABASE_URL": url}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        runs = []
        for _ in range(repeats):
            done = subprocess.run(
                [python, "-c", ATTRIBUTE, str(requests)],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            lines = [line for line in done.stdout.splitlines() if line.startswith("PROFILEJSON ")]
            if done.returncode != 0 or not lines:
                raise RuntimeError(f"attribution failed:\n{done.stdout}\n{done.stderr[-3000:]}")
            runs.append(json.loads(lines[-1][len("PROFILEJSON ") :]))
    print(
        f"djpool, one SELECT 1 per request, {repeats} processes x {requests} requests "
        "(median µs per request; wall time unless said):"
    )
    for label in runs[0]:
        value = statistics.median(run[label] for run in runs)
        print(f"  {label:60} {value:7.1f}")
    return 0


def print_profile(profiled: dict[str, dict], top: int) -> None:
    """The checkout/checkin path's functions in c, with g's figure for the same function."""
    g_rows = {row["where"]: row for row in profiled["g"]["profile"]}
    rows = [
        row
        for row in profiled["c"]["profile"]
        if any(marker in row["file"] or marker in row["where"] for marker in INTERESTING)
    ]
    rows.sort(key=lambda row: row["cumtime_us"], reverse=True)
    print("\ncProfile of c (µs per request, profiler overhead included; g for comparison):")
    print(f"  {'function':70} {'calls':>6} {'own':>7} {'cum':>7} {'g cum':>7}")
    for row in rows[:top]:
        g_cum = g_rows.get(row["where"], {}).get("cumtime_us", 0.0)
        print(
            f"  {row['where'][:70]:70} {row['calls']:6.1f} {row['tottime_us']:7.1f} "
            f"{row['cumtime_us']:7.1f} {g_cum:7.1f}"
        )
    total_c = sum(row["tottime_us"] for row in profiled["c"]["profile"])
    total_g = sum(row["tottime_us"] for row in profiled["g"]["profile"])
    print(f"  total profiled time per request: c {total_c:.0f} µs, g {total_g:.0f} µs")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
