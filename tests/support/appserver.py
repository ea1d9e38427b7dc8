"""The sample app (tests/app) served by a real gunicorn of one stack, as on a web dyno.

Usage::

    with AppServer("dj52-psycopg3", {"DATABASE_URL": url, "POOL_SIZE": "2"}) as app:
        status, body = app.get("/pid/")
        status, body = app.sql("SELECT 1")   # POST /sql/
        app.pool()           # the answering worker's pool, from /pool/ (no query)
        app.log_text()       # everything gunicorn and the app printed, djpool's lines too

The process starts like ``web: gunicorn testproj.wsgi`` in a Procfile: the
stack's gunicorn, settings from the environment only, and the shim on
PYTHONPATH unless ``shim=False``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from support import logs, procs
from support.httpclient import HttpMethods
from support.stacks import APP_DIR, DEFAULT_STACK, bin_path, stack_env
from support.waiting import wait_until


class AppServerFailed(RuntimeError):
    """gunicorn did not come up (the message ends with its log)."""


class AppServer(HttpMethods):
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
            str(bin_path(self.stack, "gunicorn")),
            "testproj.wsgi",
            "--chdir",
            str(APP_DIR),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--worker-class",
            self.worker_class,
            "--workers",
            str(self.workers),
            "--graceful-timeout",
            "10",
            "--timeout",
            "120",
            "--access-logfile",
            "-",
            "--error-logfile",
            "-",
            "--log-level",
            "info",
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
                self.port = procs.free_port()
            offset = logs.size(self.log_path)
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    self.command(),
                    cwd=APP_DIR,
                    env=self.process_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
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
                healthy = self.answers("/health/", timeout=2)
            if healthy and self._log_since(offset).count("Booting worker") >= self.workers:
                return
            if time.monotonic() > deadline:
                raise AppServerFailed(
                    self._failure(f"not ready after {self.start_timeout:.0f} s", offset)
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM gunicorn and wait; SIGKILL the process group after ``timeout``.

        Returns gunicorn's exit status (None if it was not running).
        """
        process, self.process = self.process, None
        if process is None:
            return None
        # A master that would not stop, or workers it left behind, go with the group.
        return procs.stop_group(process, timeout)

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- requests (request, get, post_json: HttpMethods) -------------------

    def sql(self, *statements: str, atomic: bool = False, timeout: float = 60) -> tuple[int, Any]:
        """POST /sql/: run ``statements`` in one request (in one transaction if ``atomic``)."""
        return self.post_json("/sql/", {"sql": list(statements), "atomic": atomic}, timeout=timeout)

    def pool(self) -> dict[str, Any]:
        """The one pool of the worker that answered /pool/ (which reads it without a query)."""
        status, body = self.get("/pool/")
        assert status == 200 and body["pools"] is not None, f"/pool/ answered {status} {body}"
        pools: list[dict[str, Any]] = body["pools"]
        assert len(pools) == 1, f"/pool/ shows {len(pools)} pools, not one: {body}"
        return pools[0]

    def settled_pool(self, checkedin: int | None = None, timeout: float = 30) -> dict[str, Any]:
        """/pool/ once nothing is checked out (and ``checkedin`` are in, if given).

        A connection goes back after the response is sent, so a pool read right
        after a request may still show it checked out: poll, do not sleep.
        """

        def settled() -> dict[str, Any] | None:
            pool = self.pool()
            if pool["checkedout"] != 0:
                return None
            if checkedin is not None and pool["checkedin"] != checkedin:
                return None
            return pool

        return wait_until(settled, timeout=timeout, message="the pool with nothing checked out")

    # -- looking at it -------------------------------------------------------

    def log_text(self) -> str:
        """Everything gunicorn, the app and the shim printed so far."""
        return logs.read_text(self.log_path)

    def djpool_lines(self) -> list[str]:
        """The lines djpool printed in gunicorn's log."""
        return logs.djpool_lines(self.log_text())

    def worker_pids(self) -> list[int]:
        """The pids of gunicorn's workers (children of the master), from /proc."""
        return procs.children_of(self.master_pid)

    def _log_since(self, offset: int) -> str:
        return logs.read_since(self.log_path, offset)

    def _failure(self, what: str, offset: int) -> str:
        tail = "\n".join(self._log_since(offset).splitlines()[-60:])
        return f"gunicorn ({self.stack}) on port {self.port}: {what}. Its log:\n{tail}"


def one_session_server(
    stack: str, database_url: str, log_dir: str | os.PathLike[str] | None = None
) -> AppServer:
    """The app with one worker, one thread and POOL_SIZE=1 (not started yet).

    Every request then runs on the same server session: what tests of the
    reset need, to see what one request leaves behind for the next.
    """
    env = {"DATABASE_URL": database_url, "POOL_SIZE": "1"}
    return AppServer(stack, env, workers=1, threads=1, log_dir=log_dir)


class AppServers:
    """The app servers one test starts, all stopped by stop_all() (or at the end of ``with``).

    With the test's pytest item as ``node``, the servers are also its
    ``djpool_app_servers``, so conftest's report hook adds their logs to a
    failure report, a server that failed to start included. A fixture::

        servers = AppServers(request.node)
        yield lambda env, **options: servers.start(AppServer(env=env, **options))
        servers.stop_all()
    """

    def __init__(self, node: Any = None) -> None:
        self.started: list[AppServer] = []
        if node is not None:
            node.djpool_app_servers = self.started

    def start(self, server: AppServer) -> AppServer:
        """Start ``server`` (and remember it first, so that its log is reported if it fails)."""
        self.started.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in reversed(self.started):
            server.stop()

    def __enter__(self) -> AppServers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()
