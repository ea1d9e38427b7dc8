"""Memory per gunicorn worker with and without djpool's shim, with and without ``--preload``.

The sample app (as in ``make bench``: gunicorn gthread, 2 workers x 4
threads, bench settings) serves a few hundred requests of both workloads on
8 client threads, so every worker has imported Django's PostgreSQL backend
(with the shim: SQLAlchemy and djpool too) and opened its connections. Then
each worker's RSS (VmRSS) and PSS (Pss in /proc/PID/smaps_rollup, which
splits pages shared with the master and the other worker between them: what
a worker really adds under ``--preload``) are read; the figures are the
median over workers, in MB (10^6 bytes).

    .venv/bench/bin/python bench/memory.py [--json]

bench/startup.py (``make bench-startup``, and ``make bench``) runs it too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BenchApp, app_env  # noqa: E402
from setups import BY_KEY, WORKLOADS  # noqa: E402

REQUESTS = 400
VARIANTS = {  # name -> (setup whose database and settings it uses, shim, --preload)
    "no shim": ("a", False, False),
    "shim": ("c", True, False),
    "no shim, --preload": ("a", False, True),
    "shim, --preload": ("c", True, True),
}


def _kib(pid: int, path: str, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/{path}") as lines:
            for line in lines:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def worker_memory(app: BenchApp) -> dict[str, float]:
    """Median RSS and PSS of the app's workers, and the master's RSS, in MB."""
    workers = app.worker_pids()
    rss = [_kib(pid, "status", "VmRSS") for pid in workers]
    pss = [_kib(pid, "smaps_rollup", "Pss") for pid in workers]
    master = _kib(app.master_pid, "status", "VmRSS")

    def mb(values: list[int | None]) -> float:
        found = [value for value in values if value is not None]
        return round(statistics.median(found) * 1024 / 1e6, 1) if found else float("nan")

    return {"worker_rss_mb": mb(rss), "worker_pss_mb": mb(pss), "master_rss_mb": mb([master])}


def _load(app: BenchApp) -> None:
    paths = [path for path in WORKLOADS.values()] * (REQUESTS // len(WORKLOADS))

    def get(path: str) -> int:
        with urllib.request.urlopen(app.base_url + path, timeout=30) as response:
            response.read()
            return int(response.status)

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(get, paths))
    if any(status != 200 for status in statuses):
        raise RuntimeError(f"the app answered {sorted(set(statuses))}")


def measure(
    url_for: Any, workers: int = 2, threads: int = 4, shim: bool | Path = True
) -> dict[str, dict[str, float]]:
    """Per variant: memory after serving the load.

    url_for(setup): the setup's DATABASE_URL. shim: True for this repo's
    shim/, a Path for another tree's.
    """
    results = {}
    for name, (key, with_shim, preload) in VARIANTS.items():
        setup = BY_KEY[key]
        use: bool | Path = shim if with_shim else False
        app = BenchApp(
            env={},
            shim=bool(use),
            workers=workers,
            threads=threads,
            preload=preload,
            start_timeout=90,
        )
        app.env = app_env({"DATABASE_URL": url_for(setup), **setup.env}, shim=use)
        app.start()
        try:
            _load(app)
            results[name] = worker_memory(app)
        finally:
            app.stop()
    return results


def print_memory(say: Any, results: dict[str, dict[str, float]]) -> None:
    say(
        f"       {'gunicorn 2 x 4 threads, after 400 requests':44} "
        f"{'worker RSS':>11} {'worker PSS':>11} {'master RSS':>11}"
    )
    for name, row in results.items():
        say(
            f"       {name:44} {row['worker_rss_mb']:8.1f} MB {row['worker_pss_mb']:8.1f} MB "
            f"{row['master_rss_mb']:8.1f} MB"
        )
    for preload in ("", ", --preload"):
        shim, bare = results.get("shim" + preload), results.get("no shim" + preload)
        if shim and bare:
            say(
                f"       the shim adds per worker{preload or ' (no --preload)'}: "
                f"RSS {shim['worker_rss_mb'] - bare['worker_rss_mb']:+.1f} MB, "
                f"PSS {shim['worker_pss_mb'] - bare['worker_pss_mb']:+.1f} MB"
            )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args(argv)
    from run import Stage

    stage = Stage(max_connections=100, rtt_ms=0).start([BY_KEY["a"], BY_KEY["c"]])
    try:
        results = measure(stage.direct_url)
    finally:
        stage.close()
    print_memory(print, results)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
