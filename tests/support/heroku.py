"""A local stand-in for Heroku's build and dyno boot, for the buildpack's tests and the demo.

What it reproduces, because the buildpack depends on it:

- The build runs in a directory named like Heroku's (``build_<hash>``), which
  is not where the app runs. The app runs from the *runtime dir*, which stands
  in for ``/app``.
- heroku/python runs first (``PythonBuildpack``, a stand-in): it copies a real
  Python installation (interpreter, libpython, standard library; this
  machine's python3 by default) into ``BUILD_DIR/.heroku/python`` and reaches
  it through the symlink ``<runtime>/.heroku/python`` during the build,
  because a Python install is not relocatable; the app's requirements go into
  it with uv. Like heroku/python it writes an ``export`` file for the next
  buildpack and ``.profile.d/python.sh`` for dynos, with the same lines: PATH,
  PYTHONHOME, LD_LIBRARY_PATH, LANG and ``PYTHONPATH=${PYTHONPATH:-$HOME}``.
- This repository's ``bin/detect``, ``bin/compile`` and ``bin/release`` run as
  the platform runs them, from an empty environment: STACK, HOME (the runtime
  dir) and PATH, the export file sourced, an ENV_DIR with one file per config
  var, and a CACHE_DIR kept between builds. Nothing of the runner's
  environment reaches a build or a dyno.
- After a successful build the build dir becomes the slug at the runtime dir
  (a failed build leaves the previous release in place).
- A dyno (``start``/``run``/``release``) starts with an empty environment:
  PATH, HOME and cwd the runtime dir, DYNO, PORT, the config vars, and bash sourcing
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
import hashlib
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `support` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.launched import EmulatorError, LaunchedProcess  # noqa: E402
from support.procs import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BUILDPACK_DIR = REPO
STACK = "heroku-24"
# Where real Python installations for the heroku/python stand-in are kept
# (one per source Python, made once per machine).
PYTHON_INSTALLS = REPO / ".venv" / "heroku-python"
# Runs a command inside a Debian root filesystem of tests/setup_chroots.sh, with
# the same paths, processes and network: for a Python this machine lacks.
CHROOT_SH = REPO / "tests" / "support" / "chroot.sh"

# What Heroku's build gives a buildpack besides its three arguments: the stack,
# HOME (/app) and the base image's PATH. Nothing of the runner's environment.
# https://devcenter.heroku.com/articles/buildpack-api#bin-compile
BUILD_BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What a dyno has before the config vars and .profile.d: Heroku's base PATH
# (plus HOME, DYNO and PORT, set per dyno).
DYNO_BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


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


def find_uv() -> str:
    """uv on PATH, else the copy tests/setup_env.sh installs into .venv/bootstrap."""
    found = shutil.which("uv") or str(REPO / ".venv" / "bootstrap" / "bin" / "uv")
    if not os.access(found, os.X_OK):
        raise EmulatorError(
            "uv is needed to install the app's requirements: run `bash tests/setup_env.sh`"
        )
    return found


def machine_python_home() -> Path:
    """The installation of this machine's python3 (its base prefix, never a virtualenv)."""
    out = subprocess.run(
        ["python3", "-c", "import sys; print(sys.base_prefix)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", DYNO_BASE_PATH)},
    ).stdout.strip()
    return Path(out)


def uv_env(home: Path, root: Path | None = None) -> dict[str, str]:
    """The environment the stand-in runs uv in: clean, but able to reach the package index.

    Only what this machine needs to reach the index is passed on: its TLS
    interception CA bundle (uv trusts only its own roots unless told), and
    uv's download cache, so that builds download each wheel once per machine.
    Heroku's heroku/python reaches PyPI with neither.
    """
    cache = os.environ.get("UV_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "uv")
    if root is not None:  # the runner's home is not inside the root filesystem
        cache = str(PYTHON_INSTALLS / f"uv-cache-{root.name}")
    env = {
        "PATH": BUILD_BASE_PATH,
        "HOME": str(home),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
        "UV_LINK_MODE": "copy",
        "UV_CACHE_DIR": cache,
    }
    if os.environ.get("SSL_CERT_FILE"):
        env["SSL_CERT_FILE"] = os.environ["SSL_CERT_FILE"]
    return env


def in_root(root: Path | None, argv: Sequence[str], cwd: Path | str = "/") -> list[str]:
    """``argv`` as run inside the root filesystem ``root`` (None: on this machine, as is)."""
    if root is None:
        return list(argv)
    return ["sh", str(CHROOT_SH), str(root), str(REPO), str(cwd), *argv]


def python_install(source_home: Path | None = None, *, root: Path | None = None) -> Path:
    """A real Python installation like the one heroku/python downloads, made once per machine.

    The interpreter, libpython and the standard library of ``source_home``
    (default: this machine's python3; with ``root``, the Debian root
    filesystem's /usr Python), without its site-packages: what the
    heroku/python stand-in copies into ``BUILD_DIR/.heroku/python``.
    """
    if root is not None:  # Debian's /usr/bin/python3.X (python3 itself may be absent)
        newest = max(
            (root / "usr" / "bin").glob("python3.[0-9]*"),
            key=lambda path: int(path.name.split(".")[1]),
        )
        source, probe = root / "usr", in_root(root, [f"/usr/bin/{newest.name}"])
    else:
        source = Path(source_home or machine_python_home())
        probe = [str(source / "bin" / "python3")]
    version = subprocess.run(
        [*probe, "-c", "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.version)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PATH": BUILD_BASE_PATH},
    ).stdout
    short, full = version.split("\n", 1)
    key = hashlib.sha256(f"{source}\n{full}".encode()).hexdigest()[:12]
    target = PYTHON_INSTALLS / f"python-{short}-{key}"
    if (target / "bin" / "python").exists():
        return target
    PYTHON_INSTALLS.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=PYTHON_INSTALLS))
    stdlib = f"python{short}"
    (partial / "bin").mkdir()
    shutil.copy2(source / "bin" / stdlib, partial / "bin" / stdlib)
    for alias in ("python3", "python"):
        (partial / "bin" / alias).symlink_to(stdlib)
    (partial / "lib").mkdir()
    for library in (source / "lib").glob("libpython3*"):
        shutil.copy2(library, partial / "lib" / library.name, follow_symlinks=False)
    # Debian's own additions (dist-packages, EXTERNALLY-MANAGED) are not Python's.
    skipped = shutil.ignore_patterns(
        "site-packages",
        "dist-packages",
        "EXTERNALLY-MANAGED",
        "test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "__pycache__",
    )
    shutil.copytree(
        source / "lib" / stdlib, partial / "lib" / stdlib, ignore=skipped, symlinks=True
    )
    (partial / "lib" / stdlib / "site-packages").mkdir()
    if root is not None:
        undo_debian_layout(partial / "lib" / stdlib)
    try:
        partial.rename(target)
    except OSError:  # another process made it first
        shutil.rmtree(partial, ignore_errors=True)
    return target


# Debian patches its Python to install packages into local/ (posix_local
# scheme: local/bin, local/lib/python3.X/dist-packages). Its site module,
# frozen into the interpreter, searches lib/python3/dist-packages too, which
# is where its deb_system scheme installs, with scripts in bin/ as upstream
# CPython's scheme does. The copy installs there (edit: Debian's default, ours),
# so the app's packages are importable and its scripts (gunicorn) are on
# heroku/python's PATH, as with heroku/python's own Python.
DEBIAN_LAYOUT_EDITS = {
    "sysconfig/__init__.py": (
        "            prefix_scheme = 'posix_local'",
        "            prefix_scheme = 'deb_system'",
    ),
}


def undo_debian_layout(stdlib: Path) -> None:
    """Make a copied Debian standard library install packages where its site module looks."""
    for name, (debian, upstream) in DEBIAN_LAYOUT_EDITS.items():
        path = stdlib / name
        text = path.read_text()
        if debian not in text:
            raise EmulatorError(f"{path} no longer holds Debian's layout choice {debian!r}")
        path.unlink()  # a hard link of the root filesystem's file: write a new one
        path.write_text(text.replace(debian, upstream, 1))


def copy_tree_linked(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` with hard links (fast; nothing writes into these files)."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, symlinks=True, copy_function=link)


class PythonBuildpack:
    """Stand-in for heroku/python: a real Python in .heroku/python, the app's requirements,
    the ``export`` file for later buildpacks and ``.profile.d/python.sh`` for dynos.

    As heroku/python does, Python is reached during the build through the
    symlink ``<runtime>/.heroku/python`` (``/app/.heroku/python`` on Heroku),
    because a Python installation is not relocatable; the export file and the
    profile script set PATH, PYTHONHOME and LD_LIBRARY_PATH to that location,
    with the same lines heroku/python writes (its ``bin/compile``, ``set_env``).
    """

    def __init__(
        self,
        python_home: Path | None = None,
        uv: str | None = None,
        *,
        with_pip: bool = True,
        root: Path | None = None,
    ) -> None:
        """python_home: the installation to copy (default: this machine's python3).
        with_pip=False: no pip, as heroku/python leaves uv and Poetry apps.
        root: a Debian root filesystem (tests/setup_chroots.sh) whose Python is
        copied instead, for the apps built and run inside it (HerokuApp's root)."""
        self.python_home = python_home
        self.uv = uv or find_uv()
        self.with_pip = with_pip
        self.root = root

    def compile(self, build_dir: Path, runtime_dir: Path, export_path: Path) -> tuple[bool, str]:
        """Install Python and the requirements; (ok, log)."""
        log = ["-----> Python app detected (stand-in for heroku/python)"]
        if not (build_dir / "requirements.txt").is_file():
            log.append(" !     The stand-in for heroku/python only knows requirements.txt")
            return False, "\n".join(log) + "\n"
        python_home = runtime_dir / ".heroku" / "python"
        install = python_install(self.python_home, root=self.root)
        log.append(f"-----> Installing Python from {install.name}")
        (build_dir / ".heroku").mkdir(parents=True, exist_ok=True)
        copy_tree_linked(install, build_dir / ".heroku" / "python")
        if build_dir != runtime_dir:  # Heroku CI builds in /app itself: no symlink then
            python_home.parent.mkdir(parents=True, exist_ok=True)
            python_home.symlink_to(build_dir / ".heroku" / "python")
        python = str(python_home / "bin" / "python")
        steps = [("Installing requirements with uv", ["-r", str(build_dir / "requirements.txt")])]
        if self.with_pip:
            steps.insert(0, ("Installing pip", ["pip"]))
        for title, packages in steps:
            log.append(f"-----> {title}")
            done = subprocess.run(
                in_root(
                    self.root,
                    [self.uv, "pip", "install", "--quiet", "--python", python, *packages],
                    build_dir,
                ),
                env=uv_env(runtime_dir, self.root),
                cwd=build_dir,
                capture_output=True,
                text=True,
                timeout=600,
            )
            log.extend("       " + line for line in (done.stdout + done.stderr).splitlines())
            if done.returncode != 0:
                return False, "\n".join(log) + "\n"
        lines = heroku_python_env_lines(with_pip=self.with_pip)
        export_path.write_text("".join(lines))
        profile_d = build_dir / ".profile.d"
        profile_d.mkdir(exist_ok=True)
        (profile_d / "python.sh").write_text("".join(lines))
        (profile_d / "python.gunicorn.sh").write_text(
            "export FORWARDED_ALLOW_IPS='*'\n"
            'export GUNICORN_CMD_ARGS=${GUNICORN_CMD_ARGS:-"--access-logfile -"}\n'
        )
        return True, "\n".join(log) + "\n"


def heroku_python_env_lines(*, with_pip: bool) -> list[str]:
    """The lines heroku/python writes both to its export file and to .profile.d/python.sh.

    (Its profile script also links /app/.heroku/python when HOME is not /app;
    here HOME is always the runtime dir, so that part is left out.)
    """
    home = "${HOME}/.heroku/python"
    lines = [
        *(['export PIP_DISABLE_PIP_VERSION_CHECK="1"\n'] if with_pip else []),
        f"export PATH={home}/bin:${{PATH}}\n",
        "export PYTHONUNBUFFERED=true\n",
        f"export PYTHONHOME={home}\n",
        f"export LIBRARY_PATH={home}/lib${{LIBRARY_PATH:+:${{LIBRARY_PATH}}}}\n",
        f"export LD_LIBRARY_PATH={home}/lib${{LD_LIBRARY_PATH:+:${{LD_LIBRARY_PATH}}}}\n",
        "export LANG=${LANG:-en_US.UTF-8}\n",
        "export PYTHONPATH=${PYTHONPATH:-${HOME}}\n",
    ]
    return lines


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
        buildpacks_after: buildpack directories run after this one (their
            ``bin/compile`` only), as when an app lists more buildpacks.
        root: a Debian root filesystem (tests/setup_chroots.sh) that the build
            and the dynos run inside, standing in for a stack image whose
            Python this machine lacks (heroku/python's default 3.14).
    """

    def __init__(
        self,
        source: Path | Sequence[Path],
        workdir: Path,
        config: Mapping[str, str] | None = None,
        *,
        cache_dir: Path | None = None,
        python_buildpack: PythonBuildpack | None | bool = True,
        buildpacks_after: Sequence[Path] = (),
        root: Path | None = None,
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
        self.root = root
        if python_buildpack is True:
            python_buildpack = PythonBuildpack(root=root)
        self.python_buildpack = python_buildpack or None
        self.buildpacks_after = [Path(path) for path in buildpacks_after]
        self.builds: list[BuildResult] = []

    # -- build -----------------------------------------------------------------

    def build(
        self,
        *,
        compile_env: Mapping[str, str] | None = None,
        compile_runs: int = 1,
        in_place: bool = False,
        timeout: float = 600,
    ) -> BuildResult:
        """Build with heroku/python (stand-in), this buildpack, then ``buildpacks_after``.

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
        stdout: list[str] = []
        stderr: list[str] = []
        release_yaml = None
        try:
            if self.python_buildpack is not None:
                python_ok, log = self.python_buildpack.compile(
                    build_dir, self.runtime_dir, export_path
                )
                stdout.append(log)
                if not python_ok:
                    return self._finish(False, stdout, stderr, build_dir, None, previous)
            compile_args = [str(build_dir), str(self.cache_dir), str(env_dir)]
            steps = [
                (BUILDPACK_DIR, "detect", [str(build_dir)], {}),
                *[(BUILDPACK_DIR, "compile", compile_args, dict(compile_env or {}))] * compile_runs,
                (BUILDPACK_DIR, "release", [str(build_dir)], {}),
            ]
            for extra in self.buildpacks_after:
                steps.append((extra, "compile", compile_args, {}))
            for buildpack, name, args, extra_env in steps:
                done = self._run_buildpack_step(
                    buildpack, name, args, extra_env, export_path, build_dir, timeout
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

    def _run_buildpack_step(
        self,
        buildpack: Path,
        name: str,
        args: list[str],
        extra_env: Mapping[str, str],
        export_path: Path,
        build_dir: Path,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        """One entry point of a buildpack, after sourcing the previous buildpack's export file.

        (Heroku sources every earlier buildpack's export; heroku/python's is
        the only one before djpool here, and djpool writes none.)
        """
        return subprocess.run(
            in_root(
                self.root,
                [
                    "bash",
                    "-c",
                    'source "$1"; shift; exec "$@"',
                    "bash",
                    str(export_path),
                    str(buildpack / "bin" / name),
                    *args,
                ],
                build_dir,
            ),
            env={**self.build_env(), **extra_env},
            cwd=build_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def build_env(self) -> dict[str, str]:
        """A buildpack's environment on Heroku: STACK, HOME (/app) and PATH. Nothing else.

        Nothing of the runner's environment is passed on: not its
        PYTHONDONTWRITEBYTECODE, PIP_*, VIRTUAL_ENV, PYTHON* or proxies. The
        buildpack's pip finds what this machine needs to reach the index
        (the CA bundle) in /etc/pip.conf, as a build image's tools would.
        """
        return {"STACK": STACK, "HOME": str(self.runtime_dir), "PATH": BUILD_BASE_PATH}

    def _copy_source(self, build_dir: Path) -> None:
        build_dir.mkdir(parents=True, exist_ok=True)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".venv")
        for source in self.sources:
            shutil.copytree(source, build_dir, dirs_exist_ok=True, ignore=ignore)

    def _write_env_dir(self, env_dir: Path) -> None:
        env_dir.mkdir(parents=True)
        for name, value in self.config.items():
            (env_dir / name).write_text(value)

    def _finish(
        self,
        ok: bool,
        stdout: list[str],
        stderr: list[str],
        build_dir: Path,
        release_yaml: str | None,
        previous: Path,
    ) -> BuildResult:
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

    def dyno_env(
        self, dyno: str, port: int | None = None, env: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """A dyno's environment before .profile.d: Heroku's dyno variables and the config vars."""
        result = {"PATH": DYNO_BASE_PATH, **self.config, **(env or {})}
        result.update({"HOME": str(self.runtime_dir), "DYNO": dyno})
        if port is not None:
            result["PORT"] = str(port)
        return result

    def boot_command(self, command: str) -> list[str]:
        """bash sourcing .profile.d/*.sh, then exec-ing the command, as a dyno boots."""
        boot = ["bash", "-c", f'for f in .profile.d/*.sh; do . "$f"; done; exec {command}']
        return in_root(self.root, boot, self.runtime_dir)

    def run(
        self,
        command: str,
        *,
        dyno: str = "run.1",
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """A one-off dyno (``heroku run``): the command's status, stdout and stderr."""
        self._require_release()
        return subprocess.run(
            self.boot_command(command),
            cwd=self.runtime_dir,
            env=self.dyno_env(dyno, free_port(), env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def release(
        self, *, env: Mapping[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """The release phase: the Procfile's ``release`` command in dyno release.1."""
        return self.run(self.process_types()["release"], dyno="release.1", env=env, timeout=timeout)

    def start(
        self,
        process_type: str = "web",
        *,
        env: Mapping[str, str] | None = None,
        number: int = 1,
        timeout: float = 60,
    ) -> Dyno:
        """Boot a Procfile process (``web.1``) and, for web, wait until it answers HTTP."""
        self._require_release()
        command = self.process_types()[process_type]
        dyno = Dyno(self, f"{process_type}.{number}", command, env)
        return dyno.start(timeout)

    def _require_release(self) -> None:
        if not (self.runtime_dir / ".profile.d").is_dir():
            raise EmulatorError(f"nothing is released at {self.runtime_dir}: build first")


class Dyno(LaunchedProcess):
    """One running dyno of a released app."""

    def __init__(
        self, app: HerokuApp, name: str, command: str, env: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(name, app.log_dir / f"{name}-{secrets.token_hex(4)}.log")
        self.app = app
        self.command = command
        self.env = app.dyno_env(name, self.port, env)
        if name.startswith("web.") and "GUNICORN_CMD_ARGS" not in self.env:
            # Only so that the emulated dyno listens on loopback alone.
            self.env["GUNICORN_CMD_ARGS"] = f"--bind 127.0.0.1:{self.port} --access-logfile -"

    def start(self, timeout: float = 60) -> Dyno:
        return self.launch(
            self.app.boot_command(self.command),
            self.app.runtime_dir,
            self.env,
            web=self.name.startswith("web."),
            timeout=timeout,
        )


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
    run.add_argument(
        "--env",
        "-e",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a config var for this dyno only (e.g. DATABASE_URL)",
    )
    run.add_argument("argv", nargs=argparse.REMAINDER)
    start = commands.add_parser("start", help="boot a Procfile process until Ctrl-C")
    start.add_argument("workdir", type=Path)
    start.add_argument("process_type", nargs="?", default="web")
    start.add_argument("--env", "-e", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)

    if args.command == "build":
        config = dict(item.split("=", 1) for item in args.config)
        app = HerokuApp(args.sources, args.workdir, config)
        (app.workdir / "emulator.json").write_text(
            json.dumps({"sources": [str(s.resolve()) for s in app.sources], "config": config})
        )
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
