"""What skipping Django's per-checkout session setup saves, in one process, side by side.

On a reused connection djpool skips Django's ``_set_autocommit`` and
``init_connection_state`` when the reset left nothing for them to change
(lib/djpool/django_patch.py). The gain is a few µs, under the noise of a
whole request in separate processes, so this times it in one: each round
puts Django's own two methods back on the class, or djpool's, and runs a
batch of checkout + checkin cycles (``ensure_connection`` then ``close``),
with no query or with ``SELECT 1``. Rounds alternate which goes first; the
figures are medians of client CPU µs per cycle over rounds, per process,
and the paired difference.

    .venv/bench/bin/python bench/session_setup.py [--rounds 20] [--cycles 2000] [--processes 3]
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import PostgresServer, bench_python  # noqa: E402
from profile_request import child_env  # noqa: E402

CHILD = r"""
import json, statistics, sys, time
import django
django.setup()
from django.db import connection
from django.db.backends.postgresql import base

wrapper_class = base.DatabaseWrapper
skipping = ("_set_autocommit", "init_connection_state")
djpools = {name: getattr(wrapper_class, name) for name in skipping}
djangos = {name: method.__wrapped__ for name, method in djpools.items()}
query, rounds, cycles = sys.argv[1] == "SELECT 1", int(sys.argv[2]), int(sys.argv[3])

def cycle_us(methods):
    for name, method in methods.items():
        setattr(wrapper_class, name, method)
    started = time.process_time_ns()
    for _ in range(cycles):
        connection.ensure_connection()
        if query:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        connection.close()
    return (time.process_time_ns() - started) / cycles / 1000

cycle_us(djpools)  # warm-up: the pool's connection, the imports
seen = {"django": [], "djpool": []}
for number in range(rounds):
    order = [("django", djangos), ("djpool", djpools)]
    for name, methods in order if number % 2 else reversed(order):
        seen[name].append(cycle_us(methods))
diffs = [a - b for a, b in zip(seen["djpool"], seen["django"])]
print(json.dumps({**{k: statistics.median(v) for k, v in seen.items()},
                  "diff": statistics.median(diffs)}))
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=3)
    args = parser.parse_args(argv)
    with PostgresServer() as server:
        server.create_role("app", secrets.token_urlsafe(18))
        server.create_database("app", owner="app")
        env = child_env(server.url(sslmode="require"), "c", "")  # djpool, as profiled
        print("-----> Checkout + checkin, client CPU µs per cycle (medians over rounds)")
        print(f"       {'':28} {'Django setup':>13} {'djpool skip':>12} {'paired diff':>12}")
        for workload in ("no query", "SELECT 1"):
            for process in range(args.processes):
                done = subprocess.run(
                    [
                        str(bench_python()),
                        "-c",
                        CHILD,
                        workload,
                        str(args.rounds),
                        str(args.cycles),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=1800,
                    check=True,
                )
                row = json.loads(done.stdout.strip().splitlines()[-1])
                label = f"{workload}, process {process + 1}"
                print(
                    f"       {label:28} {row['django']:13.1f} {row['djpool']:12.1f} "
                    f"{row['diff']:+12.1f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
