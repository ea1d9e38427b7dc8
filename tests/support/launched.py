"""A process an emulator launched: its own port, its log file, its process group.

Both emulators (tests/support/heroku.py's dynos, tests/support/cnb.py's
launched processes) start an app's process the same way once they know its
command, environment and directory: in a session of its own (so that stopping
it ends every worker), output to a log file, and for a web process a wait
until ``/health/`` answers. Standard library only, like the emulators.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from support.httpclient import HttpMethods
from support.procs import children_of, free_port, stop_group
from support.waiting import wait_until


class EmulatorError(RuntimeError):
    """An emulator could not do what was asked (not a failed build)."""


class LaunchedProcess(HttpMethods):
    """One launched process on ``port``; ``stop()`` (or ``with``) ends its whole process group.

    Subclasses set ``name``, ``log_path`` and ``port`` and call ``launch``.
    """

    name: str
    log_path: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.port = free_port()
        self.process = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    url = base_url

    def launch(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        *,
        web: bool,
        timeout: float = 60,
    ) -> Any:
        """Start ``argv``; for a web process, return once it answers /health/."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if web:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Poll /health/ until it answers 200, failing at once if the process exited."""

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise EmulatorError(
                    f"{self.name} exited with status {self.process.returncode}:\n"
                    + self.log_text()[-4000:]
                )
            return self.answers("/health/", timeout=5)

        wait_until(ready, timeout=timeout, interval=0.05, message=f"{self.name} answering /health/")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        """The children of the main process (gunicorn's workers), from /proc."""
        return children_of(self.process.pid) if self.process is not None else []

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM every process of the group (as Heroku does), SIGKILL what is left."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        return stop_group(process, timeout, term_whole_group=True, kill_timeout=10)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
