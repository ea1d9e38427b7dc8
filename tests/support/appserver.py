"""The sample app (tests/app) served by a real gunicorn of one stack, as on a web dyno.

Usage::

    with AppServer("dj52-psycopg3", {"DATABASE_URL": url, "POOL_SIZE": "2"}) as app:
        status, body = app.get("/pid/")
        status, body = app.post_json("/sql/", {"sql": ["SELECT 1"]})
        app.log_text()       # everything gunicorn and the app printed, djpool's lines too

The process starts like ``web: gunicorn testproj.wsgi`` in a Procfile: the
stack's gunicorn, settings from the environment only, and the shim on
PYTHONPATH unless ``shim=False``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from support.postgres import free_port
from support.stacks import APP_DIR, DEFAULT_STACK, bin_path, stack_env

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AppServerFailed(RuntimeError):
    """gunicorn did not come up (the message ends with its log)."""


class AppServer:
    """gunicorn serving testproj.wsgi on 127.0.0.1, started by start() or ``with``.

    Parameters:
        stack: the stack whose gunicorn and Python serve the app.
        env: the dyno's config vars (DATABASE_URL, POOL_*, APP_*).
        shim: put ``<repo>/shim`` on PYTHONPATH (default True).
        pythonpath: more PYTHONPATH entries, after the shim (e.g. an app's sitecustomize).
        worker_class: gunicorn's --worker-class (default "gthread").
        workers, threads: gunicorn's --workers and --threads (threads only for gthread).
        preload: pass --preload (load the app in the master, then fork the workers).
        extra_args: more gunicorn arguments.
        port: a fixed port; by default a free one.
        log_dir: where the log file goes (default: a temporary directory removed at exit).
        start_timeout: seconds to wait for /health/ to answer (and every worker to boot).
    """

    def __init__(
        self,
        stack: str = DEFAULT_STACK,
        env: Mapping[str, str] | None = None,
        *,
        shim: bool = True,
        pythonpath: Sequence[str | os.PathLike[str]] = (),
        worker_class: str = "gthread",
        workers: int = 1,
        threads: int = 4,
        preload: bool = False,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.stack = stack
        self.env = dict(env or {})
        self.shim = shim
        self.pythonpath = list(pythonpath)
        self.worker_class = worker_class
        self.workers = workers
        self.threads = threads
        self.preload = preload
        self.extra_args = list(extra_args)
        self.port = port
        self._fixed_port = port is not None
        if log_dir is None:
            log_dir = tempfile.mkdtemp(prefix="djpool-app-")
            atexit.register(shutil.rmtree, log_dir, True)  # readable until the run ends
        self.log_dir = Path(log_dir)
        self.start_timeout = start_timeout
        self.log_path = self.log_dir / f"gunicorn-{stack}-{os.getpid()}-{id(self):x}.log"
        self.process: subprocess.Popen[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------

    @property
    def master_pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the app server is not running")
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        args = [
            str(bin_path(self.stack, "gunicorn")), "testproj.wsgi",
            "--chdir", str(APP_DIR),
            "--bind", f"127.0.0.1:{self.port}",
            "--worker-class", self.worker_class,
            "--workers", str(self.workers),
            "--graceful-timeout", "10",
            "--timeout", "120",
            "--access-logfile", "-",
            "--error-logfile", "-",
            "--log-level", "info",
        ]
        if self.worker_class == "gthread":
            args += ["--threads", str(self.threads)]
        if self.preload:
            args.append("--preload")
        return args + self.extra_args

    def process_env(self) -> dict[str, str]:
        """The environment gunicorn starts with."""
        return stack_env(self.env, shim=self.shim, pythonpath=self.pythonpath)

    def start(self) -> AppServer:
        """Start gunicorn and wait until /health/ answers and every worker has booted."""
        if self.process is not None:
            return self
        for attempt in range(3):
            if self.port is None:
                self.port = free_port()
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    self.command(), cwd=APP_DIR, env=self.process_env(),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop() kills workers too
                )
            try:
                self._wait_ready(offset)
                return self
            except AppServerFailed:
                port_taken = "Connection in use" in self._log_since(offset)
                self.stop(timeout=10)
                if not port_taken or self._fixed_port or attempt == 2:
                    raise
                self.port = None
        raise AssertionError("unreachable")

    def _wait_ready(self, offset: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        healthy = False
        while True:
            if self.process is None or self.process.poll() is not None:
                raise AppServerFailed(self._failure("gunicorn exited", offset))
            if not healthy:
                try:
                    healthy = self.get("/health/", timeout=2)[0] == 200
                except OSError:
                    healthy = False
            if healthy and self._log_since(offset).count("Booting worker") >= self.workers:
                return
            if time.monotonic() > deadline:
                raise AppServerFailed(self._failure(
                    f"not ready after {self.start_timeout:.0f} s", offset))
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM gunicorn and wait; SIGKILL the process group after ``timeout``.

        Returns gunicorn's exit status (None if it was not running).
        """
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # A master that would not stop, or workers it left behind, go with the group.
        if process.poll() is None or _group_members(process.pid):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return process.wait(timeout=30)

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- requests ------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None,
                timeout: float = 60) -> tuple[int, Any]:
        """One HTTP request; (status, body parsed as JSON when it is JSON, else text)."""
        request = urllib.request.Request(self.base_url + path, data=body, method=method,
                                         headers=dict(headers or {}))
        try:
            with _NO_PROXY.open(request, timeout=timeout) as response:
                return response.status, _parse(response.headers, response.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, _parse(error.headers, error.read())

    def get(self, path: str, timeout: float = 60) -> tuple[int, Any]:
        return self.request("GET", path, timeout=timeout)

    def post_json(self, path: str, obj: Any, timeout: float = 60) -> tuple[int, Any]:
        return self.request("POST", path, json.dumps(obj).encode(),
                            {"Content-Type": "application/json"}, timeout=timeout)

    # -- looking at it -------------------------------------------------------

    def log_text(self) -> str:
        """Everything gunicorn, the app and the shim printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def djpool_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if line.startswith("djpool:")]

    def worker_pids(self) -> list[int]:
        """The pids of gunicorn's workers (children of the master), from /proc."""
        master = self.master_pid
        return sorted(pid for pid, ppid, _pgrp in _processes() if ppid == master)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _failure(self, what: str, offset: int) -> str:
        tail = "\n".join(self._log_since(offset).splitlines()[-60:])
        return f"gunicorn ({self.stack}) on port {self.port}: {what}. Its log:\n{tail}"


def _parse(headers: Any, raw: bytes) -> Any:
    text = raw.decode(errors="replace")
    if "json" in (headers.get("Content-Type") or ""):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _processes() -> list[tuple[int, int, int]]:
    """(pid, ppid, process group) of every process, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: split after the last ")"
        fields = stat[stat.rindex(")") + 2:].split()
        found.append((int(entry), int(fields[1]), int(fields[2])))
    return found


def _group_members(pgid: int) -> list[int]:
    return [pid for pid, _ppid, pgrp in _processes() if pgrp == pgid]
