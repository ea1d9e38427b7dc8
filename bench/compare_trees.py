"""Compare changed copies of lib/djpool with this checkout's, per request, without touching it.

Each variant is a copy of this repo's lib/ and shim/ under bench/out/trees/NAME
(kept, so ``bench/run.py --variant NAME=bench/out/trees/NAME`` can drive it
with wrk beside c and g): a patch applied to a fresh copy (``git apply``;
with several patches, also all of them in order, as "all"), or lib/ and
shim/ as of a git revision (``--ref NAME=REV``). Then one process per
variant, interleaved with c (this checkout) and g (a persistent connection,
the ceiling), loops over a request's database work (bench/startup.py's loop:
close_old_connections, SELECT 1, close_old_connections) and the sample app's
WSGI handler (bench/profile_request.py's loop, /items/ and /items3/), and
prints per request: wall time, the client's CPU time and the server
backend's CPU time.

    .venv/bench/bin/python bench/compare_trees.py change.diff [MORE.diff ...] [--quick]
    .venv/bench/bin/python bench/compare_trees.py --ref before=REV    # lib/ as of a commit
    .venv/bench/bin/python bench/compare_trees.py change.diff --rtt 2  # database 2 ms away
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from harness import APP_DIR, REPO, DelayProxyProcess, PostgresServer, bench_python  # noqa: E402
from profile_request import CHILD, child_env  # noqa: E402
from startup import Variant, per_request, print_per_request  # noqa: E402

TREES = BENCH / "out" / "trees"


def make_tree(name: str, patches: list[Path]) -> Path:
    """A copy of lib/ and shim/ with ``patches`` applied (git apply, in order)."""
    tree = TREES / name
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("lib", "shim"):
        shutil.copytree(REPO / part, tree / part, ignore=ignore)
    # The tree lies inside this repository: without a ceiling, git apply would find the
    # repository and silently skip every path outside the tree's own directory.
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tree.parent)}
    for patch in patches:
        done = subprocess.run(
            ["git", "apply", "--verbose", "--whitespace=nowarn", str(patch.resolve())],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0 or "Applied patch" not in done.stderr:
            raise SystemExit(f"{patch.name} does not apply to this checkout:\n{done.stderr}")
    return tree


def tree_at(name: str, revision: str) -> Path:
    """lib/ and shim/ as they were at ``revision`` (e.g. before a change was committed)."""
    tree = TREES / name
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", revision, "lib", "shim"], cwd=REPO, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def wsgi_per_request(
    python: str,
    url: str,
    trees: dict[str, Path | bool],
    path: str,
    repeats: int,
    requests: int,
    batches: int,
) -> dict[str, dict[str, float | None]]:
    """Per request of the app's WSGI handler, one process per variant, interleaved:
    medians of wall µs, client CPU µs and server CPU µs."""
    samples: dict[str, list[dict[str, float | None]]] = {name: [] for name in trees}
    for _ in range(repeats):
        for name, shim in trees.items():
            env = child_env(url, "g" if shim is False else "c", path)
            if isinstance(shim, Path):
                env["PYTHONPATH"] = env["PYTHONPATH"].replace(
                    str(REPO / "shim"), str(shim / "shim")
                )
            done = subprocess.run(
                [python, "-c", CHILD, str(requests), str(batches)],
                env=env,
                cwd=APP_DIR,
                capture_output=True,
                text=True,
                timeout=600,
            )
            lines = [line for line in done.stdout.splitlines() if line.startswith("PROFILEJSON ")]
            if done.returncode != 0 or not lines:
                raise RuntimeError(f"{name} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
            samples[name] += json.loads(lines[-1][len("PROFILEJSON ") :])["batches"]
    summary: dict[str, dict[str, float | None]] = {}
    for name, seen in samples.items():
        summary[name] = {}
        for key in ("wall_us", "client_cpu_us", "server_cpu_us"):
            values = [batch[key] for batch in seen if batch[key] is not None]
            summary[name][key] = statistics.median(values) if values else None
    return summary


def _cpu(row: dict[str, float | None]) -> float:
    return (row["client_cpu_us"] or 0.0) + (row["server_cpu_us"] or 0.0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("patches", nargs="*", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--rtt",
        type=float,
        default=0.0,
        metavar="MS",
        help="reach the database through the delay proxy (MS per round trip)",
    )
    parser.add_argument("--no-wsgi", action="store_true", help="only the SELECT 1 loop")
    parser.add_argument(
        "--ref",
        action="append",
        default=[],
        metavar="NAME=REV",
        help="also measure lib/ and shim/ as of git revision REV",
    )
    args = parser.parse_args(argv)
    patches = args.patches
    if not patches and not args.ref:
        parser.error("nothing to compare: give a PATCH or --ref NAME=REV")
    trees: dict[str, Path] = {}
    for spec in args.ref:
        name, _, revision = spec.partition("=")
        trees[name] = tree_at(name, revision)
        print(f"       {name}: lib/ and shim/ at {revision}")
    for patch in patches:
        parts = patch.stem.split("-")
        name = parts[1] if parts[0].isdigit() and len(parts) > 1 else patch.stem
        trees[name] = make_tree(name, [patch])
        print(f"       {name}: {patch.name} -> {trees[name].relative_to(REPO)}")
    if len(patches) > 1 and len(trees) > len(args.ref):
        trees["all"] = make_tree("all", patches)
        print(f"       all: {len(patches)} patches in order -> {trees['all'].relative_to(REPO)}")
    python = str(bench_python())
    repeats, iterations, batches = (1, 500, 3) if args.quick else (3, 1000, 5)
    with PostgresServer() as server:
        server.create_role("app", "bench-compare-password")
        server.create_database("app", owner="app")
        proxy = None
        port = server.port
        if args.rtt > 0:
            proxy = DelayProxyProcess(server.host, int(server.port or 0), args.rtt).start()
            port = proxy.port
        url = server.url(
            "app", "app", port=port, sslmode="require", application_name="bench-compare"
        )
        env = child_env(url, "g", "/items/")
        for command in (["migrate", "--no-input"], ["seed_items", "1000"]):
            subprocess.run(
                [python, str(APP_DIR / "manage.py"), *command],
                env=env,
                cwd=APP_DIR,
                check=True,
                capture_output=True,
                timeout=300,
            )
        variants: dict[str, Variant] = {
            "g: persistent connection (ceiling)": (
                {"LOOP_CONN_MAX_AGE": "none"},
                False,
                iterations,
            ),
            "c: djpool as it is": ({"LOOP_CONN_MAX_AGE": "0"}, True, iterations),
        }
        for name, tree in trees.items():
            variants[f"c+{name}"] = ({"LOOP_CONN_MAX_AGE": "0"}, tree / "shim", iterations)
        print(
            f"-----> One request's database work (SELECT 1), {repeats} x {batches} batches "
            f"of {iterations}; server TimeZone {server.query('SHOW TimeZone')[0][0]}"
            + (f"; database RTT +{args.rtt:g} ms" if args.rtt else "")
        )
        results = per_request(python, url, variants, repeats, batches)
        print_per_request(print, results, "g: persistent connection (ceiling)")
        wsgi_trees: dict[str, Path | bool] = {"g": False, "c": True, **trees}
        for path in () if args.no_wsgi else ("/items/", "/items3/"):
            print(f"-----> The sample app's {path} through its WSGI handler, one thread")
            found = wsgi_per_request(python, url, wsgi_trees, path, repeats, iterations, batches)
            print_per_request(print, found, "g")
            g_cpu = _cpu(found["g"])
            print(
                "       CPU-bound throughput relative to g (client + server CPU): "
                + ", ".join(f"{name} {g_cpu / _cpu(row):.2f}" for name, row in found.items())
            )
        if proxy is not None:
            proxy.stop()
    variants_args = " ".join(
        f"--variant {name}={tree.relative_to(REPO)}" for name, tree in trees.items()
    )
    print(f"\n       wrk: .venv/bench/bin/python bench/run.py --setups c,g {variants_args}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
