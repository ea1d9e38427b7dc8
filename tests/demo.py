"""``make demo``: the sample app on the emulated Heroku, unpooled and then pooled, side by side.

1. starts a throwaway PostgreSQL set up like Heroku Postgres (TLS only,
   scram-sha-256; tests/support/postgres.py);
2. builds the sample app (tests/app + tests/buildpack_apps/base) with the
   heroku/python stand-in and this buildpack (tests/support/heroku.py),
   runs its release phase (migrate) and seeds 100 items;
3. boots ``web: gunicorn testproj.wsgi --worker-class gthread --threads 4
   --preload`` with WEB_CONCURRENCY=2, first with POOL_DISABLED=1, then
   pooled (POOL_SIZE=5), and drives the same load at each for DEMO_SECONDS
   (default 10) from DEMO_CLIENTS (default 16) threads, on loopback only;
4. prints requests per second, latency percentiles and how many server
   connections each side opened (the server log's "connection authorized"
   lines) and held at most at once (pg_stat_activity).

Run it with the test venv's Python (``make demo`` does): it needs psycopg to
look at the server.
"""

from __future__ import annotations

import http.client
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.heroku import REPO, HerokuApp  # noqa: E402
from support.logs import djpool_lines  # noqa: E402
from support.postgres import PostgresServer  # noqa: E402
from support.waiting import wait_until  # noqa: E402

SECONDS = float(os.environ.get("DEMO_SECONDS", "10"))
CLIENTS = int(os.environ.get("DEMO_CLIENTS", "16"))
ITEMS = 100
CONFIG = {"WEB_CONCURRENCY": "2", "POOL_SIZE": "5"}


@dataclass
class Side:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    opened: int
    peak: int

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def step(text: str) -> None:
    print(f"-----> {text}", flush=True)


def detail(text: str) -> None:
    print(f"       {text}", flush=True)


def drive(port: int, seconds: float, clients: int) -> tuple[int, int, list[float], float]:
    """``clients`` threads request /items/ in a loop for ``seconds``; (ok, errors, latencies)."""
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]

    def client(index: int) -> None:
        mine: list[float] = []
        failed = 0
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = index
        while time.monotonic() < stop_at:
            n += clients
            started = time.perf_counter()
            try:
                connection.request("GET", f"/items/?name=item-{n % ITEMS + 1}")
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    failed += 1
                    continue
                mine.append(time.perf_counter() - started)
            except (OSError, http.client.HTTPException):
                failed += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.close()
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies), errors[0], latencies, time.monotonic() - started


def run_side(app: HerokuApp, pg: PostgresServer, name: str, extra: dict[str, str]) -> Side:
    application_name = f"demo-{name}-{secrets.token_hex(3)}"
    env = {"DATABASE_URL": pg.url(sslmode="require", application_name=application_name), **extra}
    step(f"{name}: booting web.1 ({', '.join(f'{k}={v}' for k, v in {**CONFIG, **extra}.items())})")
    with app.start("web", env=env) as web:
        workers = int(CONFIG["WEB_CONCURRENCY"])
        wait_until(
            lambda: len(web.worker_pids()) >= workers,
            timeout=30,
            interval=0.05,
            message=f"{workers} gunicorn workers",
        )
        djpool = djpool_lines(web.log_text())
        detail(djpool[0] if djpool else "(no djpool line: unpooled)")
        web.get("/items/")  # warm up: the first request imports the views
        opened_before = pg.connections_opened(application_name=application_name)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], len(pg.backends(application_name=application_name)))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        detail(f"driving /items/ from {CLIENTS} client threads for {SECONDS:g} s")
        try:
            ok, errors, latencies, elapsed = drive(web.port, SECONDS, CLIENTS)
        finally:
            done.set()
            sampler.join()
        opened = pg.connections_opened(application_name=application_name) - opened_before
    return Side(name, ok, errors, elapsed, latencies, opened, peak[0])


def report(sides: list[Side]) -> None:
    rows = [
        ("requests/s", lambda s: f"{s.requests / s.seconds:,.0f}"),
        ("p50 latency", lambda s: f"{s.percentile(0.50):.1f} ms"),
        ("p99 latency", lambda s: f"{s.percentile(0.99):.1f} ms"),
        ("requests", lambda s: f"{s.requests:,}"),
        ("errors", lambda s: f"{s.errors:,}"),
        ("server connections opened", lambda s: f"{s.opened:,}"),
        ("server connections at once (peak)", lambda s: f"{s.peak}"),
    ]
    width = max(len(label) for label, _ in rows)
    print()
    print(f"{'':<{width}}  " + "  ".join(f"{side.name:>12}" for side in sides))
    for label, value in rows:
        print(f"{label:<{width}}  " + "  ".join(f"{value(side):>12}" for side in sides))
    unpooled, pooled = sides
    if pooled.requests and unpooled.requests:
        print()
        speedup = (pooled.requests / pooled.seconds) / (unpooled.requests / unpooled.seconds)
        print(
            f"Pooled: {speedup:.1f}x the requests per second; server logins "
            f"(each one TCP + TLS + SCRAM) {unpooled.opened:,} -> {pooled.opened:,}."
        )


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="djpool-demo-"))
    try:
        step("Starting PostgreSQL (TLS only, scram-sha-256)")
        with PostgresServer() as pg:
            pg.create_role("app", secrets.token_urlsafe(18), createdb=True)
            pg.create_database("app", owner="app")
            detail(f"listening on 127.0.0.1:{pg.port}")

            step("Building the sample app with heroku/python (stand-in) and djpool")
            app = HerokuApp(
                [REPO / "tests" / "app", REPO / "tests" / "buildpack_apps" / "base"],
                workdir,
                CONFIG,
            )
            build = app.build()
            for line in build.log.splitlines():
                print("    " + line)
            if not build.ok:
                print("The build failed.", file=sys.stderr)
                return 1

            admin_url = pg.url(sslmode="require", application_name="demo-setup")
            step("Release phase: python manage.py migrate")
            release = app.release(env={"DATABASE_URL": admin_url})
            if release.returncode != 0:
                print(release.stdout + release.stderr, file=sys.stderr)
                return 1
            seeded = app.run(
                f"python manage.py seed_items {ITEMS}", env={"DATABASE_URL": admin_url}
            )
            if seeded.returncode != 0:
                print(seeded.stdout + seeded.stderr, file=sys.stderr)
                return 1

            sides = [
                run_side(app, pg, "unpooled", {"POOL_DISABLED": "1"}),
                run_side(app, pg, "pooled", {}),
            ]
            report(sides)
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
