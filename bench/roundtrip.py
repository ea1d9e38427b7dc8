"""What DISCARD ALL costs the server: a statement, or a round trip? (pgbench, side by side).

Runs PostgreSQL's own pgbench, one client, over TLS with scram-sha-256 on
127.0.0.1, with five one-transaction scripts, interleaved over rounds, and
prints median transactions per second and µs per transaction:

    SELECT 1                         one round trip (the ceiling's request)
    DISCARD ALL                      one round trip (the reset alone)
    SELECT 1, then SELECT 1          two round trips
    SELECT 1, then DISCARD ALL       two round trips (a request, then djpool's reset)
    DISCARD ALL + SELECT 1 pipelined both in one write, one Sync (one round trip)

If DISCARD ALL costs what SELECT 1 costs, and a second round trip costs what
a second SELECT 1 costs, the reset's price is the message, not the statement.

    .venv/bench/bin/python bench/roundtrip.py [--seconds 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import PostgresServer  # noqa: E402

SCRIPTS: dict[str, str] = {
    "SELECT 1": "SELECT 1;\n",
    "DISCARD ALL": "DISCARD ALL;\n",
    "SELECT 1, then SELECT 1": "SELECT 1;\nSELECT 1;\n",
    "SELECT 1, then DISCARD ALL": "SELECT 1;\nDISCARD ALL;\n",
    "DISCARD ALL + SELECT 1 pipelined": "\\startpipeline\nDISCARD ALL;\nSELECT 1;\n\\endpipeline\n",
}


def pgbench(bindir: str, url: str, script: Path, seconds: float) -> float:
    """Transactions per second of one pgbench client running ``script``."""
    done = subprocess.run(
        [f"{bindir}/pgbench", "-n", "-M", "extended", "-c", "1", "-T", f"{seconds:g}"]
        + ["-f", str(script), url],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"^tps = ([0-9.]+)", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"pgbench failed on {script.name}:\n{done.stdout}{done.stderr}")
    return float(found.group(1))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    bindir = subprocess.check_output(["pg_config", "--bindir"], text=True).strip()
    tps: dict[str, list[float]] = {name: [] for name in SCRIPTS}
    with PostgresServer() as server, tempfile.TemporaryDirectory() as scratch:
        server.create_role("app", secrets.token_urlsafe(18))
        server.create_database("app", owner="app")
        url = server.url("app", "app", sslmode="require", application_name="bench-roundtrip")
        files = {}
        for number, (name, text) in enumerate(SCRIPTS.items()):
            files[name] = Path(scratch) / f"script{number}.sql"
            files[name].write_text(text)
        for round_number in range(args.rounds):
            order = list(SCRIPTS) if round_number % 2 == 0 else list(reversed(SCRIPTS))
            for name in order:
                tps[name].append(pgbench(bindir, url, files[name], args.seconds))
    print(
        f"pgbench, 1 client, TLS + scram-sha-256 on 127.0.0.1, {args.rounds} interleaved "
        f"rounds of {args.seconds:g} s (medians):"
    )
    print(f"  {'script (one transaction)':34} {'tps':>8} {'µs/tx':>8} {'× SELECT 1':>11}")
    base = statistics.median(tps["SELECT 1"])
    for name, values in tps.items():
        median = statistics.median(values)
        print(f"  {name:34} {median:8.0f} {1e6 / median:8.1f} {median / base:11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
