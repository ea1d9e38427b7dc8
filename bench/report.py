"""Turn one benchmark run (bench/out/results.json) into tables, targets and a chart.

Medians over the interleaved rounds for rates and latencies; errors are
summed over rounds; peak connections are the highest seen in any round;
connections opened are the median per measured run.

Ratios to the ceiling g are paired: each run is divided by the mean of the g
runs measured just before and after it (bench/run.py's round_order), and the
median of those per-run ratios is reported. The shared machine changes speed
by up to 2x between minutes, which moves every setup's req/s; a run and its
neighbouring g runs see the same machine. Comparisons between two setups
(c against b, say) divide their paired ratios.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from setups import BUDGET_PATH, CEILING, DJPOOL_MAX_OVERFLOW, DJPOOL_POOL_SIZE, WORKLOADS

START_MARK = "<!-- bench:results:start -->"
END_MARK = "<!-- bench:results:end -->"
POOLED_ALTERNATIVES = ("b", "d-sess", "d-txn", "e", "e-reset", "f")


def paired(runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per run: its req/s, p99 and CPU per request relative to the neighbouring g runs.

    Runs without a ``slot`` (results saved before pairing existed) are compared
    with the median g run of their workload instead.
    """
    ceiling = {
        (run["workload"], run["round"], run["slot"]): run
        for run in runs
        if run["setup"] == CEILING and "slot" in run
    }
    fallback: dict[str, dict[str, float]] = {}
    for workload in {run["workload"] for run in runs}:
        group = [run for run in runs if run["setup"] == CEILING and run["workload"] == workload]
        if group:
            fallback[workload] = {
                key: statistics.median(_value(run, key) for run in group)
                for key in ("rps", "p99_ms", "cpu")
            }
    out = []
    for run in runs:
        if "slot" in run:
            around = [
                ceiling.get((run["workload"], run["round"], run["slot"] + step)) for step in (-1, 1)
            ]
            near = [g for g in around if g is not None]
        else:
            near = []
        if near:
            base = {
                key: statistics.fmean(_value(g, key) for g in near)
                for key in ("rps", "p99_ms", "cpu")
            }
        else:
            base = fallback.get(run["workload"], {})
        if run["setup"] == CEILING or not base:
            out.append({"rps": 1.0, "p99_ms": 1.0, "cpu": 1.0} if run["setup"] == CEILING else {})
            continue
        out.append(
            {
                "rps": _ratio(run["rps"], base["rps"]),
                "p99_ms": _ratio(run["p99_ms"], base["p99_ms"]),
                "cpu": _ratio(base["cpu"], _value(run, "cpu")),
            }
        )
    return out


def _value(run: dict[str, Any], key: str) -> float:
    if key == "cpu":
        return run.get("app_cpu_us", 0.0) + run.get("db_cpu_us", 0.0)
    return float(run[key])


def summarise(runs: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(setup, workload) -> medians and totals over the rounds, and the paired ratios to g."""
    runs = list(runs)
    grouped: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, float]]]] = {}
    for run, ratio in zip(runs, paired(runs), strict=True):
        grouped.setdefault((run["setup"], run["workload"]), []).append((run, ratio))
    summary = {}
    for key, pairs in grouped.items():
        group = [run for run, _ in pairs]
        ratios = [ratio for _, ratio in pairs if ratio]
        summary[key] = {
            "rps": statistics.median(run["rps"] for run in group),
            "rps_all": [round(run["rps"], 1) for run in group],
            "p50_ms": statistics.median(run["p50_ms"] for run in group),
            "p99_ms": statistics.median(run["p99_ms"] for run in group),
            "errors": sum(run["errors"] for run in group),
            "requests": sum(run["requests"] for run in group),
            "peak_connections": max(run["peak_connections"] for run in group),
            "connections_opened": statistics.median(run["connections_opened"] for run in group),
            "rounds": len(group),
            "app_cpu_us": statistics.median(run.get("app_cpu_us", 0.0) for run in group),
            "db_cpu_us": statistics.median(run.get("db_cpu_us", 0.0) for run in group),
            "rps_x_g": _median(ratio["rps"] for ratio in ratios),
            "p99_x_g": _median(ratio["p99_ms"] for ratio in ratios),
            "cpu_g_over": _median(ratio["cpu"] for ratio in ratios),
        }
    return summary


def _median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def _relative(row: dict[str, Any], other: dict[str, Any]) -> float:
    """row's req/s over other's: paired through g when both were, else medians."""
    ratio = _ratio(row["rps_x_g"], other["rps_x_g"])
    return ratio if ratio == ratio else _ratio(row["rps"], other["rps"])  # NaN: no g runs


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for djpool (setup c), each with its measured ratio and pass/miss."""
    summary = summarise(results["runs"])
    workers = results["plan"]["workers"]
    rows: list[dict[str, Any]] = []

    def add(what: str, value: float, goal: str, passed: bool) -> None:
        rows.append(
            {"target": what, "value": value, "goal": goal, "result": "pass" if passed else "MISS"}
        )

    for workload in WORKLOADS:
        c, g = summary.get(("c", workload)), summary.get((CEILING, workload))
        if c and g:
            ratio = c["rps_x_g"]
            add(f"c / g req/s, {workload}", ratio, ">= 0.95", ratio >= 0.95)
            ratio = c["p99_x_g"]
            add(f"c / g p99, {workload}", ratio, "<= 1.10", ratio <= 1.10)
            ratio = c["cpu_g_over"]
            add(f"g / c CPU per request (cross-check), {workload}", ratio, ">= 0.95", ratio >= 0.95)
    c, a = summary.get(("c", "items")), summary.get(("a", "items"))
    if c and a:
        ratio = _relative(c, a)
        add("c / a req/s, items", ratio, ">= 3", ratio >= 3)
    for workload in WORKLOADS:
        c = summary.get(("c", workload))
        for other in POOLED_ALTERNATIVES:
            x = summary.get((other, workload))
            if c and x:
                ratio = _relative(c, x)
                add(f"c / {other} req/s, {workload}", ratio, ">= 1.00", ratio >= 1.0)
    for workload in WORKLOADS:
        for native in ("e", "e-reset"):  # Django's own pool, without and with djpool's reset
            c, e = summary.get(("c", workload)), summary.get((native, workload))
            if c and e:
                ratio = _ratio(c["app_cpu_us"], e["app_cpu_us"])
                add(f"c / {native} app CPU per request, {workload}", ratio, "<= 1.00", ratio <= 1.0)
    limit = workers * (DJPOOL_POOL_SIZE + DJPOOL_MAX_OVERFLOW)
    peaks = [
        summary[("c", workload)]["peak_connections"]
        for workload in WORKLOADS
        if ("c", workload) in summary
    ]
    if peaks:
        add(
            "c peak server connections",
            max(peaks),
            f"<= {workers} x ({DJPOOL_POOL_SIZE}+{DJPOOL_MAX_OVERFLOW}) = {limit}",
            max(peaks) <= limit,
        )
    for row in startup_targets(results.get("startup") or {}):
        rows.append(row)
    return rows


def startup_targets(startup: dict[str, Any]) -> list[dict[str, Any]]:
    """bench/startup.py's targets (interpreter start, the patch's import) and memory figures.

    Each row has target, value, shown (formatted with its unit), goal and
    result: pass, MISS, or "report" for a figure the issue asks to report
    without a goal (memory per worker).
    """
    rows: list[dict[str, Any]] = []

    def add(what: str, value: float, shown: str, goal: str, result: str) -> None:
        rows.append(
            {"target": what, "value": value, "shown": shown, "goal": goal, "result": result}
        )

    for key, what, goal in (
        ("shim_start", "shim at interpreter start (URL set - POOL_DISABLED=1)", 1.0),
        ("patch_import", "backend import with the patch, beyond SQLAlchemy's own", 10.0),
    ):
        value = startup.get(key + "_ms")
        if value is None:
            continue
        add(what, value, f"{value:+.2f} ms", f"<= {goal:g} ms", "pass" if value <= goal else "MISS")
        used = startup.get(key + "_cpu_ms")
        if used is not None:
            add(
                f"{what}, CPU time (cross-check)",
                used,
                f"{used:+.2f} ms",
                f"<= {goal:g} ms",
                "pass" if used <= goal else "MISS",
            )
    memory = startup.get("memory") or {}
    for preload in ("", ", --preload"):
        shim, bare = memory.get("shim" + preload), memory.get("no shim" + preload)
        if not (shim and bare):
            continue
        for key, what in (("worker_rss_mb", "RSS"), ("worker_pss_mb", "PSS")):
            value = shim[key] - bare[key]
            add(
                f"{what} the shim adds per gunicorn worker{preload}",
                value,
                f"{value:+.1f} MB",
                f"{bare[key]:.1f} MB without",
                "report",
            )
    return rows


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def main_tables(results: dict[str, Any]) -> str:
    summary = summarise(results["runs"])
    setups = results["setups"]
    out = []
    for workload, path in WORKLOADS.items():
        if not any(key[1] == workload for key in summary):
            continue
        what = "one indexed query" if workload == "items" else "three queries in atomic()"
        out.append(f"**{path}** ({what})\n")
        out.append(
            "| setup | | req/s | × g | p50 ms | p99 ms | errors | peak conns | opened/run "
            "| CPU µs/req app+db | g CPU / CPU |"
        )
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for key, label in setups.items():
            row = summary.get((key, workload))
            if row is None:
                continue
            out.append(
                f"| {key} | {label} | {row['rps']:.0f} | {_fmt(row['rps_x_g'])} | "
                f"{_fmt(row['p50_ms'])} | {_fmt(row['p99_ms'])} | {row['errors']} | "
                f"{row['peak_connections']} | {row['connections_opened']:g} | "
                f"{row['app_cpu_us']:.0f}+{row['db_cpu_us']:.0f} | "
                f"{_fmt(row['cpu_g_over'])} |"
            )
        out.append("")
    return "\n".join(out)


def targets_table(results: dict[str, Any]) -> str:
    out = ["| target | measured | goal | |", "|---|---:|---|---|"]
    for row in targets(results):
        value = row["value"]
        shown = row.get("shown") or (f"{value:g}" if isinstance(value, int) else _fmt(value))
        out.append(f"| {row['target']} | {shown} | {row['goal']} | {row['result']} |")
    return "\n".join(out) + "\n"


def budget_table(results: dict[str, Any]) -> str:
    if not results.get("budget"):
        return ""
    plan = results["plan"]
    out = [
        f"max_connections={plan['budget_max_connections']} (3 of them reserved for "
        f"superusers), gunicorn {plan['budget_workers']} × {plan['budget_threads']} "
        f"threads, wrk -c {plan['budget_connections']} on {BUDGET_PATH} for "
        f"{plan['budget_seconds']:g} s, a new connection per request, wrk timeout 5 s:\n",
        "| setup | req/s | p99 ms | errors | requests | peak conns | serving? "
        "| first error logged |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in results["budget"]:
        if "failed" in row:
            out.append(f"| {row['setup']} | – | – | – | – | – | no | {row['failed']} |")
            continue
        total = row["requests"] + row["socket_errors"]
        share = row["errors"] / total if total else 1.0
        serving = "yes" if share == 0 else ("partly" if share < 0.5 else "no")
        first = (row.get("log_lines") or [""])[0].replace("|", "\\|")[:120]
        out.append(
            f"| {row['setup']} | {row['rps']:.0f} | {row['p99_ms']:.0f} | "
            f"{row['errors']} | {total} | "
            f"{row['peak_connections']} | {serving} ({share:.0%} errors) | {first} |"
        )
    return "\n".join(out) + "\n"


def scale_out_table(results: dict[str, Any]) -> str:
    """bench/scaleout.py's results as a Markdown table, with the plan above it."""
    scale_out = results.get("scale_out")
    if not scale_out:
        return ""
    plan = scale_out["plan"]
    out = [
        f"{plan['dynos']} dynos x gunicorn {plan['workers']} x {plan['threads']} threads "
        f"(POOL_SIZE={plan['pool_size']} where djpool runs), max_connections="
        f"{plan['max_connections']} (17 for the app), PgBouncer default_pool_size="
        f"{plan['pgbouncer_pool_size']}; one wrk per dyno, {plan['connections']} connections "
        f"in all on {plan['path']} for {plan['seconds']:g} s, a new connection per request, "
        "wrk timeout 5 s; p99 is the worst dyno's:\n",
        "| setup | req/s | p99 ms | errors | requests | peak server conns "
        "| server logins | PgBouncer logins | serves every request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in scale_out["rows"]:
        if "failed" in row:
            out.append(f"| {row['setup']} | – | – | – | – | – | – | – | no: {row['failed']} |")
            continue
        serves = (
            "yes" if row["errors"] == 0 else f"no ({row['errors'] / row['attempts']:.0%} errors)"
        )
        out.append(
            f"| {row['setup']} | {row['rps']:.0f} | {row['p99_ms']:.0f} | {row['errors']} | "
            f"{row['attempts']} | {row['peak_connections']} | {row['server_logins']} | "
            f"{row['pgbouncer_logins']} | {serves} |"
        )
    return "\n".join(out) + "\n"


def startup_table(results: dict[str, Any]) -> str:
    startup = results.get("startup")
    if not startup:
        return ""
    out = [
        f"| interpreter start (median of {startup.get('runs', 30)}) | ms | vs bare | CPU ms |",
        "|---|---:|---:|---:|",
    ]
    bare = startup["start_ms"]["bare"]
    cpu = startup.get("start_cpu_ms") or {}
    for name, value in startup["start_ms"].items():
        used = cpu.get(name)
        shown = "–" if used is None else f"{used:.1f}"
        out.append(f"| {name} | {value:.1f} | {value - bare:+.1f} | {shown} |")
    out.append("")
    out.append(
        "| one request's database work, one process (close_old_connections, "
        "SELECT 1, close_old_connections) | wall µs | client CPU µs | server CPU µs |"
    )
    out.append("|---|---:|---:|---:|")
    for name, row in startup["request"].items():
        cells = [
            "–" if row[key] is None else f"{row[key]:.0f}"
            for key in ("wall_us", "client_cpu_us", "server_cpu_us")
        ]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    memory = startup.get("memory")
    if memory:
        out.append("")
        out.append(
            "| memory per gunicorn worker (2 × 4 threads, after 400 requests) "
            "| worker RSS MB | worker PSS MB | master RSS MB |"
        )
        out.append("|---|---:|---:|---:|")
        for name, row in memory.items():
            out.append(
                f"| {name} | {row['worker_rss_mb']:.1f} | {row['worker_pss_mb']:.1f} "
                f"| {row['master_rss_mb']:.1f} |"
            )
    return "\n".join(out) + "\n"


def headline(results: dict[str, Any]) -> str:
    summary = summarise(results["runs"])

    def rps(key: str, workload: str = "items") -> float:
        return summary.get((key, workload), {}).get("rps", float("nan"))

    def vs(key: str, other: str, workload: str = "items") -> float:
        """Paired: key's and other's req/s each relative to the g runs beside them."""
        return _ratio(
            summary.get((key, workload), {}).get("rps_x_g", float("nan")),
            summary.get((other, workload), {}).get("rps_x_g", float("nan")),
        )

    budget = {row["setup"]: row for row in results.get("budget", [])}
    c_budget = budget.get("c", {})
    failing = [
        key
        for key, row in budget.items()
        if key != "c" and (("failed" in row) or row.get("errors", 0) > 0)
    ]
    rtt = results["plan"]["rtt_ms"]
    where = f"with {rtt:g} ms between app and database" if rtt else "on loopback"
    text = (
        f"On {results['machine']['nproc']} cores {where}, a Django view making one indexed "
        f"query served {rps('c'):.0f} req/s with djpool against {rps('a'):.0f} without "
        f"pooling ({vs('c', 'a'):.1f}× paired) and {rps('g'):.0f} with a connection "
        f"that is never closed ({vs('c', 'g'):.0%} of that ceiling, paired); "
        f"Django's persistent connections as Heroku's template sets them reached "
        f"{rps('b'):.0f}, PgBouncer in transaction mode {rps('d-txn'):.0f}, Django's own "
        f"pool {rps('e'):.0f} and django-db-connection-pool {rps('f'):.0f}."
    )
    if c_budget and "errors" in c_budget:
        text += (
            f" With 24 app threads and a 20-connection server, djpool answered every "
            f"request ({c_budget['errors']} errors) holding at most "
            f"{c_budget['peak_connections']} server connections"
            + (f", while {', '.join(failing)} failed requests" if failing else "")
            + "."
        )
    return text


def render(results: dict[str, Any]) -> str:
    """Everything a person reads after a run, as Markdown."""
    plan = results["plan"]
    parts = [
        f"Measured {plan['rounds']} interleaved round(s) × {plan['seconds']:g} s per setup "
        f"and workload, each run between two runs of g (× g and the targets are medians of "
        f"those paired ratios); gunicorn gthread {plan['workers']} workers × {plan['threads']} "
        f"threads; wrk 1 thread, {plan['connections']} connections"
        + (
            f"; database round trip +{plan['rtt_ms']:g} ms through the delay proxy "
            f"(measured {results.get('measured_rtt_ms') or 0:.2f} ms per proxied round trip)"
            if plan["rtt_ms"]
            else "; database on loopback"
        )
        + ".\n",
        main_tables(results),
        "**Targets** (djpool = c, ceiling = g)\n",
        targets_table(results),
    ]
    budget = budget_table(results)
    if budget:
        parts += ["**Connection budget**\n", budget]
    scale_out = scale_out_table(results)
    if scale_out:
        parts += ["**Connection budget, scaled out** (bench/scaleout.py)\n", scale_out]
    startup = startup_table(results)
    if startup:
        parts += ["**Startup and per-request overhead** (bench/startup.py)\n", startup]
    parts += ["**Headline**\n", headline(results) + "\n"]
    return "\n".join(parts)


def chart(results: dict[str, Any], path: Path) -> None:
    """Req/s and p99 per setup and workload, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(results["runs"])
    keys = list(results["setups"])
    workloads = [w for w in WORKLOADS if any((k, w) in summary for k in keys)]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(workloads), 1)
    for index, workload in enumerate(workloads):
        xs = [n + index * width for n in range(len(keys))]
        rps = [summary.get((k, workload), {}).get("rps", 0) for k in keys]
        p99 = [summary.get((k, workload), {}).get("p99_ms", 0) for k in keys]
        colours = ["tab:green" if k == "c" else ("tab:gray" if k == "g" else None) for k in keys]
        bars = left.bar(xs, rps, width, label=WORKLOADS[workload], alpha=1.0 if index == 0 else 0.6)
        right.bar(xs, p99, width, label=WORKLOADS[workload], alpha=1.0 if index == 0 else 0.6)
        for bar, colour in zip(bars, colours, strict=True):
            if colour:
                bar.set_edgecolor("black")
                bar.set_linewidth(1.5)
    for axis, title in ((left, "throughput (req/s, median)"), (right, "p99 latency (ms, median)")):
        axis.set_xticks([n + width * (len(workloads) - 1) / 2 for n in range(len(keys))], keys)
        axis.set_title(title)
        axis.legend()
        axis.grid(axis="y", alpha=0.3)
    rtt = results["plan"]["rtt_ms"]
    figure.suptitle(
        "djpool (c) vs no pooling (a), persistent (b), PgBouncer (d), Django pool "
        "(e), django-db-connection-pool (f), ceiling (g)"
        + (f"; RTT +{rtt:g} ms" if rtt else "; loopback"),
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def update_docs(results: dict[str, Any], doc: Path, docs_dir: Path) -> None:
    """Put the generated sections between the markers of docs/benchmark.md; copy the chart."""
    docs_dir.mkdir(exist_ok=True)
    rtt = results["plan"]["rtt_ms"]
    chart_name = f"benchmark-rtt{rtt:g}ms.png" if rtt else "benchmark.png"
    chart(results, docs_dir / chart_name)
    block = "\n".join(
        [
            START_MARK,
            f"_Generated by `{results['command']}` in {results['elapsed_s']:.0f} s; "
            "edit outside the markers._\n",
            f"![req/s and p99 per setup]({chart_name})\n",
            render(results),
            "Machine: "
            + ", ".join(f"{k} {v}" for k, v in results["machine"].items() if k != "load_at_start")
            + f"; load average at start {results['machine']['load_at_start'][0]:.2f}.\n",
            "Versions: "
            + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
            + f"; server TimeZone {results.get('server_timezone')}; this repository at "
            f"{results.get('code', '?')}.\n",
            END_MARK,
        ]
    )
    start, end = marks(rtt)
    if rtt:
        block = block.replace(START_MARK, start, 1).replace(END_MARK, end, 1)
    text = doc.read_text() if doc.exists() else f"# Benchmark\n\n{START_MARK}\n{END_MARK}\n"
    if start not in text or end not in text:
        heading = f"\n## Results with the database {rtt:g} ms away\n" if rtt else ""
        text += f"{heading}\n{start}\n{end}\n"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    doc.write_text(head + block + tail)


def marks(rtt: float) -> tuple[str, str]:
    """The markers of a run's section: loopback runs share one, each --rtt its own."""
    if not rtt:
        return START_MARK, END_MARK
    return f"<!-- bench:results:rtt{rtt:g}ms:start -->", f"<!-- bench:results:rtt{rtt:g}ms:end -->"


def main(argv: list[str]) -> int:
    """Re-render a saved run: python bench/report.py [bench/out/results.json] [--docs]."""
    paths = [arg for arg in argv if not arg.startswith("--")]
    source = Path(paths[0]) if paths else Path(__file__).resolve().parent / "out" / "results.json"
    results = json.loads(source.read_text())
    print(render(results))
    if "--docs" in argv:
        repo = Path(__file__).resolve().parents[1]
        update_docs(results, repo / "docs" / "benchmark.md", repo / "docs")
    return 0


if __name__ == "__main__":
    shutil.get_terminal_size()
    sys.exit(main(sys.argv[1:]))
