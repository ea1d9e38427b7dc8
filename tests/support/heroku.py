"""A local stand-in for Heroku's build and dyno boot, for the buildpack's tests and the demo.

What it reproduces, because the buildpack depends on it:

- The build runs in a directory named like Heroku's (``build_<hash>``), which
  is not where the app runs. The app runs from the *runtime dir*, which stands
  in for ``/app``.
- heroku/python runs first (``PythonBuildpack``, a stand-in): it installs
  Python into ``BUILD_DIR/.heroku/python`` and reaches it through the symlink
  ``<runtime>/.heroku/python`` during the build, because a Python install is
  not relocatable. Here the "install" is a virtualenv made *through* that
  symlink, so every path it records is a runtime path; the app's requirements
  go into it with uv (its cache keeps repeated builds fast). Like heroku/python
  it writes an ``export`` file for the next buildpack and
  ``.profile.d/python.sh`` (PATH, and ``PYTHONPATH=${PYTHONPATH:-$HOME}``).
  Unlike it, it sets no PYTHONHOME: a virtualenv must not have one.
- This repository's ``bin/detect``, ``bin/compile`` and ``bin/release`` run as
  the platform runs them: the export file sourced, HOME the runtime dir, an
  ENV_DIR with one file per config var, and a CACHE_DIR kept between builds.
- After a successful build the build dir becomes the slug at the runtime dir
  (a failed build leaves the previous release in place).
- A dyno (``start``/``run``/``release``) starts with a clean environment:
  HOME and cwd the runtime dir, DYNO, PORT, the config vars, and bash sourcing
  ``.profile.d/*.sh`` before it execs the Procfile command. Web dynos listen
  on 127.0.0.1 only (GUNICORN_CMD_ARGS, unless the config vars set it).

Standard library only. From the command line (``python tests/support/heroku.py
--help``)::

    python tests/support/heroku.py build WORKDIR APP_DIR [APP_DIR...] --config K=V ...
    python tests/support/heroku.py run -e DATABASE_URL=... WORKDIR -- python manage.py migrate
    python tests/support/heroku.py start -e DATABASE_URL=... WORKDIR web   # until Ctrl-C
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUILDPACK_DIR = REPO
STACK = "heroku-24"

# Variables of the calling process that must not reach a build.
_NOT_FOR_BUILDS = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DATABASE_URL",
                   "DJANGO_SETTINGS_MODULE", "PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS")
_NOT_FOR_BUILDS_PREFIXES = ("POOL_", "DJPOOL_")

# What a dyno has before the config vars: Heroku's base PATH and locale.
_DYNO_BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EmulatorError(RuntimeError):
    """The emulator itself could not do what was asked (not a failed build)."""


@dataclass
class BuildResult:
    """One build: ``ok`` when every step passed; stdout and stderr as the build log shows them."""

    ok: bool
    stdout: str
    stderr: str
    build_dir: Path
    release_yaml: str | None = None

    @property
    def log(self) -> str:
        return self.stdout + self.stderr


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def find_uv() -> str:
    """uv on PATH, else the copy tests/setup_env.sh installs into .venv/bootstrap."""
    found = shutil.which("uv") or str(REPO / ".venv" / "bootstrap" / "bin" / "uv")
    if not os.access(found, os.X_OK):
        raise EmulatorError("uv is needed to install the app's requirements: "
                            "run `bash tests/setup_env.sh`")
    return found


def machine_python() -> str:
    """The Python the app's virtualenv is made from: this machine's python3, as for the stacks."""
    return subprocess.run(
        ["python3", "-c", "import sys; print(sys.executable)"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()


class PythonBuildpack:
    """Stand-in for heroku/python: Python and the app's requirements, the export file."""

    def __init__(self, python: str | None = None, uv: str | None = None, *,
                 with_pip: bool = True) -> None:
        """with_pip=False: a Python without pip, as heroku/python leaves uv and Poetry apps."""
        self.python = python or machine_python()
        self.uv = uv or find_uv()
        self.with_pip = with_pip

    def compile(self, build_dir: Path, runtime_dir: Path, export_path: Path,
                env: Mapping[str, str]) -> tuple[bool, str]:
        """Install Python and the requirements; (ok, log)."""
        log = ["-----> Python app detected (stand-in for heroku/python)"]
        if not (build_dir / "requirements.txt").is_file():
            log.append(" !     The stand-in for heroku/python only knows requirements.txt")
            return False, "\n".join(log) + "\n"
        python_home = runtime_dir / ".heroku" / "python"
        (build_dir / ".heroku" / "python").mkdir(parents=True)
        if build_dir != runtime_dir:  # Heroku CI builds in /app itself: no symlink then
            python_home.parent.mkdir(parents=True, exist_ok=True)
            python_home.symlink_to(build_dir / ".heroku" / "python")
        uv_env = {**env, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
        steps = [
            ("Installing Python (a virtualenv at the runtime path)",
             [self.uv, "venv", "--quiet", *(["--seed"] if self.with_pip else []),
              "--python", self.python, str(python_home)]),
            ("Installing requirements with uv",
             [self.uv, "pip", "install", "--quiet", "--python", str(python_home / "bin" / "python"),
              "-r", str(build_dir / "requirements.txt")]),
        ]
        for title, command in steps:
            log.append(f"-----> {title}")
            done = subprocess.run(command, env=uv_env, cwd=build_dir, capture_output=True,
                                  text=True, timeout=600)
            log.extend("       " + line for line in (done.stdout + done.stderr).splitlines())
            if done.returncode != 0:
                return False, "\n".join(log) + "\n"
        export_path.write_text(
            'export PATH="${HOME}/.heroku/python/bin:${PATH}"\n'
            "export PYTHONUNBUFFERED=1\n"
            'export LANG="${LANG:-en_US.UTF-8}"\n'
            'export PYTHONPATH="${PYTHONPATH:-${HOME}}"\n'
        )
        profile_d = build_dir / ".profile.d"
        profile_d.mkdir(exist_ok=True)
        (profile_d / "python.sh").write_text(
            'export PATH="${HOME}/.heroku/python/bin:${PATH}"\n'
            "export PYTHONUNBUFFERED=true\n"
            'export LANG="${LANG:-en_US.UTF-8}"\n'
            'export PYTHONPATH="${PYTHONPATH:-${HOME}}"\n'
        )
        (profile_d / "python.gunicorn.sh").write_text(
            "export FORWARDED_ALLOW_IPS='*'\n"
            'export GUNICORN_CMD_ARGS=${GUNICORN_CMD_ARGS:-"--access-logfile -"}\n'
        )
        return True, "\n".join(log) + "\n"


class HerokuApp:
    """An app on the emulated platform: its source, config vars, build cache and runtime dir.

    Parameters:
        source: the app's source; several directories are laid over each other
            in order (a later one's files win), so a variant can add to a base.
        workdir: where everything of this app lives: ``app/`` (the runtime
            dir, standing in for /app), ``build_<hash>/`` during a build,
            ``cache/`` (CACHE_DIR), ``env_<hash>/`` (ENV_DIR) and ``logs/``.
        config: the config vars (DATABASE_URL, POOL_*, WEB_CONCURRENCY, ...).
        cache_dir: another CACHE_DIR (e.g. shared with another app), by default ``workdir/cache``.
        python_buildpack: the heroku/python stand-in; None builds without it
            (as when heroku/python is missing from the app's buildpacks).
    """

    def __init__(
        self,
        source: Path | Sequence[Path],
        workdir: Path,
        config: Mapping[str, str] | None = None,
        *,
        cache_dir: Path | None = None,
        python_buildpack: PythonBuildpack | None | bool = True,
    ) -> None:
        if isinstance(source, (str, Path)):
            source = [source]
        self.sources = [Path(path) for path in source]
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.runtime_dir = self.workdir / "app"
        self.cache_dir = Path(cache_dir) if cache_dir else self.workdir / "cache"
        self.log_dir = self.workdir / "logs"
        self.config: dict[str, str] = dict(config or {})
        if python_buildpack is True:
            python_buildpack = PythonBuildpack()
        self.python_buildpack = python_buildpack or None
        self.builds: list[BuildResult] = []

    # -- build -----------------------------------------------------------------

    def build(self, *, compile_env: Mapping[str, str] | None = None, compile_runs: int = 1,
              in_place: bool = False, timeout: float = 600) -> BuildResult:
        """Build the source with heroku/python (stand-in) then this buildpack.

        compile_env: variables for bin/compile's environment only (for example
            a PIP_INDEX_URL that leads nowhere, to show nothing is downloaded).
        compile_runs: 2 runs bin/compile twice on the same build dir.
        in_place: build in the runtime dir itself, as Heroku CI builds in /app.
        """
        previous = self.workdir / "app.previous"
        shutil.rmtree(previous, ignore_errors=True)
        if self.runtime_dir.exists():
            self.runtime_dir.rename(previous)  # put back if the build fails
        self.runtime_dir.mkdir()
        build_dir = self.workdir / f"build_{secrets.token_hex(10)}"
        if in_place:
            build_dir = self.runtime_dir
        env_dir = self.workdir / f"env_{secrets.token_hex(4)}"
        export_path = self.workdir / "heroku-python-export"
        export_path.write_text("")
        self._copy_source(build_dir)
        self._write_env_dir(env_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        env = self.build_env()
        stdout: list[str] = []
        stderr: list[str] = []
        release_yaml = None
        try:
            if self.python_buildpack is not None:
                python_ok, log = self.python_buildpack.compile(build_dir, self.runtime_dir,
                                                               export_path, env)
                stdout.append(log)
                if not python_ok:
                    return self._finish(False, stdout, stderr, build_dir, None, previous)
            compile_step = ("compile", [str(build_dir), str(self.cache_dir), str(env_dir)],
                            dict(compile_env or {}))
            steps = [("detect", [str(build_dir)], {}), *[compile_step] * compile_runs,
                     ("release", [str(build_dir)], {})]
            for name, args, extra_env in steps:
                done = subprocess.run(
                    ["bash", "-c", 'source "$1"; shift; exec "$@"', "bash", str(export_path),
                     str(BUILDPACK_DIR / "bin" / name), *args],
                    env={**env, **extra_env}, cwd=build_dir, capture_output=True, text=True,
                    timeout=timeout,
                )
                if name == "release":
                    release_yaml = done.stdout
                elif name == "detect" and done.returncode == 0:
                    stdout.append(f"-----> {done.stdout.strip()} app detected\n")
                else:
                    stdout.append(done.stdout)
                stderr.append(done.stderr)
                if done.returncode != 0:
                    stderr.append(f"bin/{name} exited with status {done.returncode}\n")
                    return self._finish(False, stdout, stderr, build_dir, release_yaml, previous)
            return self._finish(True, stdout, stderr, build_dir, release_yaml, previous)
        finally:
            shutil.rmtree(env_dir, ignore_errors=True)

    def build_env(self) -> dict[str, str]:
        """bin/compile's environment: this machine's (network settings), HOME the runtime dir."""
        env = {
            key: value for key, value in os.environ.items()
            if key not in _NOT_FOR_BUILDS and not key.startswith(_NOT_FOR_BUILDS_PREFIXES)
        }
        # HOME moves to the runtime dir (/app during a Heroku build); tools that
        # find their own files under the old HOME are pointed back at them.
        home = os.path.expanduser("~")
        if os.path.isdir(os.path.join(home, ".pyenv")):
            env.setdefault("PYENV_ROOT", os.path.join(home, ".pyenv"))
        env.setdefault("UV_CACHE_DIR", os.path.join(home, ".cache", "uv"))
        env.update({"HOME": str(self.runtime_dir), "STACK": STACK})
        return env

    def _copy_source(self, build_dir: Path) -> None:
        build_dir.mkdir(parents=True, exist_ok=True)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".venv")
        for source in self.sources:
            shutil.copytree(source, build_dir, dirs_exist_ok=True, ignore=ignore)

    def _write_env_dir(self, env_dir: Path) -> None:
        env_dir.mkdir(parents=True)
        for name, value in self.config.items():
            (env_dir / name).write_text(value)

    def _finish(self, ok: bool, stdout: list[str], stderr: list[str], build_dir: Path,
                release_yaml: str | None, previous: Path) -> BuildResult:
        """Release the slug (the build dir becomes the runtime dir), or put the last one back."""
        in_place = build_dir == self.runtime_dir
        if ok:
            if not in_place:
                shutil.rmtree(self.runtime_dir)  # only the .heroku/python symlink is there
                build_dir.rename(self.runtime_dir)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            if not in_place:
                shutil.rmtree(build_dir, ignore_errors=True)
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            if previous.exists():
                previous.rename(self.runtime_dir)
        result = BuildResult(ok, "".join(stdout), "".join(stderr), build_dir, release_yaml)
        self.builds.append(result)
        return result

    # -- dynos -----------------------------------------------------------------

    def process_types(self) -> dict[str, str]:
        """The Procfile of the released slug: {"web": "gunicorn ...", ...}."""
        procfile = self.runtime_dir / "Procfile"
        types = {}
        for line in procfile.read_text().splitlines():
            name, sep, command = line.partition(":")
            if sep and name.strip() and not name.startswith("#"):
                types[name.strip()] = command.strip()
        return types

    def dyno_env(self, dyno: str, port: int | None = None,
                 env: Mapping[str, str] | None = None) -> dict[str, str]:
        result = {**_DYNO_BASE_ENV, **self.config, **(env or {})}
        result.update({"HOME": str(self.runtime_dir), "DYNO": dyno})
        if port is not None:
            result["PORT"] = str(port)
        return result

    def boot_command(self, command: str) -> list[str]:
        """bash sourcing .profile.d/*.sh, then exec-ing the command, as a dyno boots."""
        return ["bash", "-c", f'for f in .profile.d/*.sh; do . "$f"; done; exec {command}']

    def run(self, command: str, *, dyno: str = "run.1", env: Mapping[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A one-off dyno (``heroku run``): the command's status, stdout and stderr."""
        self._require_release()
        return subprocess.run(
            self.boot_command(command), cwd=self.runtime_dir,
            env=self.dyno_env(dyno, free_port(), env),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
        )

    def release(self, *, env: Mapping[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """The release phase: the Procfile's ``release`` command in dyno release.1."""
        return self.run(self.process_types()["release"], dyno="release.1", env=env,
                        timeout=timeout)

    def start(self, process_type: str = "web", *, env: Mapping[str, str] | None = None,
              number: int = 1, timeout: float = 60) -> Dyno:
        """Boot a Procfile process (``web.1``) and, for web, wait until it answers HTTP."""
        self._require_release()
        command = self.process_types()[process_type]
        dyno = Dyno(self, f"{process_type}.{number}", command, env)
        return dyno.start(timeout)

    def _require_release(self) -> None:
        if not (self.runtime_dir / ".profile.d").is_dir():
            raise EmulatorError(f"nothing is released at {self.runtime_dir}: build first")


class Dyno:
    """One running dyno; ``stop()`` (or ``with``) ends its whole process group."""

    def __init__(self, app: HerokuApp, name: str, command: str,
                 env: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.name = name
        self.command = command
        self.port = free_port()
        self.env = app.dyno_env(name, self.port, env)
        if name.startswith("web.") and "GUNICORN_CMD_ARGS" not in self.env:
            self.env["GUNICORN_CMD_ARGS"] = f"--bind 127.0.0.1:{self.port} --access-logfile -"
        app.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = app.log_dir / f"{name}-{secrets.token_hex(4)}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Dyno:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.app.boot_command(self.command), cwd=self.app.runtime_dir, env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self.name.startswith("web."):
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Poll /health/ until it answers 200, failing early if the dyno exited."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise EmulatorError(f"{self.name} exited with status {self.process.returncode}:\n"
                                    + self.log_text()[-4000:])
            try:
                status, _ = self.get("/health/", timeout=5)
                if status == 200:
                    return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise EmulatorError(f"{self.name} did not answer within {timeout:.0f} s:\n"
                                    + self.log_text()[-4000:])
            time.sleep(0.05)

    def request(self, method: str, path: str, body: bytes | None = None,
                timeout: float = 60) -> tuple[int, Any]:
        """One HTTP request; (status, parsed JSON or text)."""
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with _NO_PROXY.open(req, timeout=timeout) as response:
                status, raw, kind = response.status, response.read(), response.headers
        except urllib.error.HTTPError as error:
            status, raw, kind = error.code, error.read(), error.headers
        if kind.get_content_type() == "application/json":
            return status, json.loads(raw)
        return status, raw.decode(errors="replace")

    def get(self, path: str, timeout: float = 60) -> tuple[int, Any]:
        return self.request("GET", path, timeout=timeout)

    def post_json(self, path: str, obj: Any, timeout: float = 60) -> tuple[int, Any]:
        return self.request("POST", path, json.dumps(obj).encode(), timeout=timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        """The children of the dyno's main process (gunicorn's workers), from /proc."""
        if self.process is None:
            return []
        children = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue
            # the command name may hold spaces and parentheses: split after the last ")"
            if int(stat[stat.rindex(")") + 2:].split()[1]) == self.process.pid:
                children.append(int(entry))
        return sorted(children)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM the dyno's process group (as Heroku does), SIGKILL what is left."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        return process.returncode

    def __enter__(self) -> Dyno:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- command line -------------------------------------------------------------

def _load(workdir: Path) -> HerokuApp:
    state = json.loads((workdir / "emulator.json").read_text())
    return HerokuApp([Path(s) for s in state["sources"]], workdir, state["config"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tests/support/heroku.py",
        description="Build an app with heroku/python (stand-in) and this buildpack, then "
                    "boot its Procfile processes, as Heroku would.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build APP_DIR(s) into WORKDIR/app")
    build.add_argument("workdir", type=Path)
    build.add_argument("sources", type=Path, nargs="+", help="laid over each other in order")
    build.add_argument("--config", action="append", default=[], metavar="NAME=VALUE")
    run = commands.add_parser("run", help="a one-off dyno: run a command in the released app")
    run.add_argument("workdir", type=Path)
    run.add_argument("--env", "-e", action="append", default=[], metavar="NAME=VALUE",
                     help="a config var for this dyno only (e.g. DATABASE_URL)")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    start = commands.add_parser("start", help="boot a Procfile process until Ctrl-C")
    start.add_argument("workdir", type=Path)
    start.add_argument("process_type", nargs="?", default="web")
    start.add_argument("--env", "-e", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)

    if args.command == "build":
        config = dict(item.split("=", 1) for item in args.config)
        app = HerokuApp(args.sources, args.workdir, config)
        (app.workdir / "emulator.json").write_text(json.dumps(
            {"sources": [str(s.resolve()) for s in app.sources], "config": config}))
        result = app.build()
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        return 0 if result.ok else 1
    app = _load(args.workdir.resolve())
    env = dict(item.split("=", 1) for item in args.env)
    if args.command == "run":
        argv_ = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        done = app.run(shlex.join(argv_), env=env)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        return done.returncode
    dyno = app.start(args.process_type, env=env)
    print(f"{dyno.name} is up at {dyno.url} (log: {dyno.log_path}); Ctrl-C stops it", flush=True)
    try:
        while dyno.process is not None and dyno.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        dyno.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
