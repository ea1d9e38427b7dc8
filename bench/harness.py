"""The moving parts of the benchmark: app servers, PgBouncer, the delay proxy, wrk, sampling.

It reuses the test suite's helpers (tests/support): ``PostgresServer`` for a
throwaway PostgreSQL set up like Heroku Postgres (TLS only, scram-sha-256)
and ``AppServer`` for the sample app under a real gunicorn. The benchmark's
gunicorn is the bench venv's (.venv/bench, which also has psycopg_pool and
django-db-connection-pool), with no access log.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from support.appserver import AppServer  # noqa: E402
from support.pgbouncer import PgBouncer  # noqa: E402
from support.pgbouncer import version as pgbouncer_version  # noqa: E402
from support.postgres import PostgresServer, free_port  # noqa: E402
from support.stacks import APP_DIR, SHIM_DIR  # noqa: E402

BENCH_DIR = REPO / "bench"
BENCH_VENV = REPO / ".venv" / "bench"
BENCH_PYTHON = BENCH_VENV / "bin" / "python"
SETTINGS_DIR = BENCH_DIR / "settings"
WRK_SCRIPT = BENCH_DIR / "wrk_report.lua"

__all__ = [
    "APP_DIR",
    "BENCH_PYTHON",
    "BenchApp",
    "DelayProxyProcess",
    "BuildpackPgBouncer",
    "PgBouncer",
    "PostgresServer",
    "ConnectionSampler",
    "WrkResult",
    "free_port",
    "run_wrk",
]


def bench_python() -> Path:
    """The bench venv's interpreter; fails with what to run if it is missing."""
    if not BENCH_PYTHON.exists():
        raise FileNotFoundError(
            f"{BENCH_PYTHON} is missing: run `make bench` "
            "(or `bash tests/setup_env.sh && bash bench/setup.sh`)"
        )
    return BENCH_PYTHON


def app_env(env: Mapping[str, str], *, shim: bool | Path) -> dict[str, str]:
    """A dyno's environment for the sample app with the bench settings overlay.

    shim: True for this repo's shim/, a Path for another tree's (bench/compare_trees.py).
    """
    shim_dir = SHIM_DIR if shim is True else shim
    path = ([str(shim_dir)] if shim_dir else []) + [str(SETTINGS_DIR), str(APP_DIR)]
    return {
        "PYTHONPATH": os.pathsep.join(path),
        "DJANGO_SETTINGS_MODULE": "benchsettings",
        **env,
    }


class BenchApp(AppServer):
    """The suite's AppServer, run with the bench venv's gunicorn and without an access log."""

    def command(self) -> list[str]:
        args = super().command()
        args[0] = str(BENCH_VENV / "bin" / "gunicorn")
        if "--access-logfile" in args:
            index = args.index("--access-logfile")
            del args[index : index + 2]
        return args


# -- wrk ---------------------------------------------------------------------


@dataclass
class WrkResult:
    """One wrk run, as wrk_report.lua reports it (latencies in microseconds)."""

    requests: int
    duration_us: int
    p50_us: int
    p90_us: int
    p99_us: int
    max_us: int
    mean_us: float
    connect: int
    read: int
    write: int
    status: int
    timeout: int
    raw: str = field(default="", repr=False)

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6) if self.duration_us else 0.0

    @property
    def errors(self) -> int:
        """Responses with status >= 400 plus socket errors (connect, read, write, timeout)."""
        return self.status + self.connect + self.read + self.write + self.timeout


def run_wrk(
    url: str,
    seconds: float,
    connections: int,
    threads: int = 1,
    timeout_s: int = 10,
    keepalive: bool = True,
) -> WrkResult:
    """Drive ``url`` (loopback only) for ``seconds`` with wrk and parse its report.

    keepalive=False sends ``Connection: close``: a new TCP connection per request,
    as Heroku's router makes them, so gunicorn's workers share the load evenly.
    """
    if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise ValueError("the benchmark only loads servers on 127.0.0.1")
    whole = max(1, round(seconds))  # wrk takes whole seconds only
    command = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{whole}s",
        "--timeout",
        f"{timeout_s}s",
        "-s",
        str(WRK_SCRIPT),
        url,
    ]
    if not keepalive:
        command[1:1] = ["-H", "Connection: close"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=whole + 60)
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            values = json.loads(line[len("WRKJSON ") :])
            values.pop("bytes", None)
            return WrkResult(**values, raw=done.stdout)
    raise RuntimeError(
        f"wrk printed no report (status {done.returncode}):\n{done.stdout}\n{done.stderr}"
    )


# -- CPU time of process trees ----------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root``, its reaped children and its live children.

    A server's backends that exited were reaped by the postmaster (their time is
    in its cutime/cstime); live ones are counted one by one. So the difference
    of two readings is what the whole tree used in between, however many
    processes came and went.
    """
    fields = _stat_fields(root)
    if fields is None:
        return 0.0
    total = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        child = _stat_fields(int(entry))
        if child is not None and child[1] == str(root):
            total += int(child[11]) + int(child[12])
    return total / _TICKS


def postmaster_pid(server: PostgresServer) -> int:
    """The server's main process, from postmaster.pid."""
    return int((server.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


# -- sampling the server -------------------------------------------------------


class ConnectionSampler:
    """Samples pg_stat_activity every ``interval`` s and keeps the peak per database."""

    def __init__(self, server: PostgresServer, interval: float = 0.025) -> None:
        self.server = server
        self.interval = interval
        self._peaks: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples = 0

    def __enter__(self) -> ConnectionSampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            rows = self.server.query(
                "SELECT datname, count(*) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                " AND datname IS NOT NULL GROUP BY datname"
            )
            with self._lock:
                self.samples += 1
                for datname, count in rows:
                    if count > self._peaks.get(datname, 0):
                        self._peaks[datname] = int(count)
            self._stop.wait(self.interval)

    def reset(self) -> None:
        """Forget the peaks seen so far (start of a measured window)."""
        with self._lock:
            self._peaks.clear()

    def peak(self, datname: str) -> int:
        with self._lock:
            return self._peaks.get(datname, 0)


# -- PgBouncer as heroku-buildpack-pgbouncer runs it ----------------------------


class BuildpackPgBouncer(PgBouncer):
    """A local PgBouncer configured like heroku-buildpack-pgbouncer's gen-pgbouncer-conf.sh.

    tests/support/pgbouncer.py's PgBouncer (Debian's binary in a temporary
    directory, as the postgres user when root), with the buildpack's settings
    and defaults (v0.18): listen on 127.0.0.1 with no TLS from the app (the
    app is in the same dyno), clients authenticate with scram-sha-256
    against a plain-text auth_file, the server is reached with
    ``server_tls_sslmode = require``, pool_mode transaction unless told
    otherwise, ``DISCARD ALL;`` as the reset query in session mode,
    log_connections on. Differences, all forced by the setting: a free port
    instead of 6000; ``max_prepared_statements`` is left out (Debian's
    PgBouncer 1.18 predates it; 0, the buildpack's default, is 1.18's
    behaviour); ``default_pool_size`` is passed in (the buildpack's
    PGBOUNCER_DEFAULT_POOL_SIZE, default 1) so the comparison can give
    PgBouncer the same server-connection budget as djpool.
    """

    def __init__(
        self,
        *,
        server_host: str,
        server_port: int,
        databases: Mapping[str, str],
        user: str,
        password: str,
        pool_mode: str = "transaction",
        default_pool_size: int = 1,
        reserve_pool_size: int = 1,
        max_client_conn: int = 100,
    ) -> None:
        super().__init__(
            server_host=server_host,
            server_port=server_port,
            databases=databases,
            users={user: password},
            pool_mode=pool_mode,
            default_pool_size=default_pool_size,
            reserve_pool_size=reserve_pool_size,
            max_client_conn=max_client_conn,
            server_tls="require",
            client_tls=False,
            settings={
                "server_tls_protocols": "secure",
                "server_tls_ciphers": "HIGH:!ADH:!AECDH:!LOW:!EXP:!MD5:!3DES:!SRP:!PSK:@STRENGTH",
                "server_reset_query": "DISCARD ALL;" if pool_mode == "session" else "",
                "reserve_pool_timeout": 5.0,
                "server_lifetime": 3600,
                "server_idle_timeout": 600,
                "ignore_startup_parameters": "",
                "query_wait_timeout": 120,
            },
        )
        self.user = user

    def database_url(self, client_db: str) -> str:
        """The DATABASE_URL the buildpack gives the app: plain TCP to the local PgBouncer."""
        return self.url(client_db, self.user)


# -- the delay proxy -------------------------------------------------------------


class DelayProxyProcess:
    """bench/delayproxy.py in a process of its own, between a client and ``target``."""

    def __init__(
        self, target_host: str, target_port: int, rtt_ms: float, max_seconds: float = 3600.0
    ) -> None:
        self.target = (target_host, target_port)
        self.rtt_ms = rtt_ms
        self.max_seconds = max_seconds
        self.port = 0
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> DelayProxyProcess:
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(BENCH_DIR / "delayproxy.py"),
                "--target",
                f"{self.target[0]}:{self.target[1]}",
                "--rtt-ms",
                str(self.rtt_ms),
                "--max-seconds",
                str(self.max_seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            raise RuntimeError("the delay proxy did not start")
        self.port = int(line[1])
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def measure_rtt_ms(host: str, port: int, samples: int = 50) -> float:
    """Median time of a TCP connect to host:port (through a proxy: one proxied round trip)."""
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # PostgreSQL's SSLRequest: the server answers one byte, so this is one round trip.
            sock.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
            sock.recv(1)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return times[len(times) // 2]


def versions(server: PostgresServer) -> dict[str, Any]:
    """What ran: Python and packages of the bench venv, PostgreSQL, PgBouncer, wrk."""
    code = (
        "import json, platform, django, psycopg, sqlalchemy, gunicorn, psycopg_pool\n"
        "from importlib.metadata import version\n"
        "print(json.dumps({'python': platform.python_version(),"
        " 'django': django.get_version(), 'psycopg': psycopg.__version__,"
        " 'psycopg_pool': psycopg_pool.__version__, 'sqlalchemy': sqlalchemy.__version__,"
        " 'gunicorn': gunicorn.__version__,"
        " 'django-db-connection-pool': version('django-db-connection-pool'),"
        " 'dj-database-url': version('dj-database-url')}))"
    )
    found = json.loads(
        subprocess.run(
            [str(bench_python()), "-c", code],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    )
    found["postgresql"] = server.query("SHOW server_version")[0][0]
    found["pgbouncer"] = pgbouncer_version()
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=30)
    found["wrk"] = (wrk.stdout + wrk.stderr).split()[1] if (wrk.stdout + wrk.stderr) else "?"
    return found


def machine() -> dict[str, Any]:
    """nproc, CPU model, memory, kernel: where the figures were measured."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "load_at_start": os.getloadavg(),
    }
