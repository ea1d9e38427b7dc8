"""A Cloud Native Buildpack lifecycle for the CNB's tests: detect, build, export, launch.

Written from the Buildpack API 0.10 spec (buildpacks/spec, branch
buildpack/0.10, buildpack.md) and the Platform spec's launcher, checked
against buildpacks/lifecycle where the spec leaves a detail open. No Docker,
no ``pack``: the "image" is two directories that keep the same absolute path
from build to launch, as the exporter must preserve them (buildpack.md,
Phase #6: "Ensure the absolute path of <layers>/<layer> is preserved"):

- ``workspace/``: the app dir (``/workspace``), the working dir of every phase;
- ``layers/<buildpack id, / as _>/<layer>/``: each buildpack's layers (``/layers``).

What it does, phase by phase:

- **detect** runs every buildpack of the group (``bin/detect`` with the
  positional arguments the lifecycle still passes, CNB_PLATFORM_DIR,
  CNB_BUILD_PLAN_PATH, CNB_BUILDPACK_DIR and the CNB_TARGET_* variables);
  0 passes, 100 fails, anything else is an error. The build plans are
  resolved as the spec says: a required name must be provided by the same or
  an earlier buildpack, a provided one required by the same or a later one.
- **restore**: ``cache = true`` layers of the last successful build come back
  (directory, and ``<layer>.toml`` without its ``[types]``); ``launch = true``
  layers that were not cached get their ``<layer>.toml`` back without
  ``[types]`` and no directory. Nothing else.
- **build** runs each ``bin/build`` (positional arguments, CNB_LAYERS_DIR,
  CNB_PLATFORM_DIR, CNB_BP_PLAN_PATH, CNB_BUILDPACK_DIR, CNB_TARGET_*). After
  each, layers whose types are all false become ``<layer>.ignore``, and the
  ``build = true`` layers change the environment of the buildpacks after it:
  ``bin``/``lib``/``include``/``pkgconfig`` onto PATH and friends, then
  ``env/`` and ``env.build/`` by the modification rules.
- **export**: the cache layers are saved; everything that is not a launch
  layer leaves the image; every file's mtime is set to 1980-01-01T00:00:01Z,
  as the lifecycle does for reproducible layers (so a timestamp-based .pyc no
  longer matches its source at launch, as on Fir).
- **launch** (``start``/``run``): the base environment (run image PATH, HOME,
  the config vars, PORT), then per buildpack in build order the launch
  layers' ``bin``/``lib`` and their ``env/``, ``env.launch/`` and
  ``env.launch/<process>/`` files, then every ``exec.d`` program (fd 3 carries
  its TOML), then the process from ``launch.toml`` (``bash -c <Procfile line>``
  from the heroku/procfile stand-in), started directly in the app dir.

The environment of every phase starts EMPTY: the lifecycle passes a buildpack
only HOME, PATH and its other path variables, proxies and HOSTNAME from its
own environment, and those are set here to a build image's values, never
taken from the runner. Two things this machine needs to reach the package
index are added, each in ``network_env``; nothing else of the runner's
environment reaches a buildpack or a process.

Stand-ins for Heroku's own CNBs, written from their sources
(heroku/buildpacks-python, heroku/buildpacks-procfile):

- ``HerokuPython``: a ``python`` layer holding a copy of a real Python
  installation (support.heroku.python_install: interpreter, libpython,
  standard library, no site-packages); a ``venv`` layer made with
  ``python -m venv --without-pip``, VIRTUAL_ENV set for build and launch,
  its ``bin`` first on PATH. pip apps (requirements.txt) also get a
  build-only ``pip`` layer (pip from the standard library's bundled wheel,
  PYTHONUSERBASE, PIP_PYTHON pointing at the venv), as heroku/python has no
  pip in the venv and none at launch; uv apps (uv.lock) get a build-only
  ``uv`` layer and ``uv sync --locked``, and no pip anywhere. The app's
  packages are installed with uv either way (this machine's uv cache keeps
  it fast), where heroku/python runs pip for pip apps. It refuses a build
  whose environment has one of heroku/python's forbidden variables.
- ``HerokuProcfile``: ``launch.toml`` processes ``bash -c <command>``, the
  ``web`` process the default.

Standard library only. From the command line (``python tests/support/cnb.py --help``)::

    python tests/support/cnb.py build WORKDIR APP_DIR [APP_DIR...] --config K=V ...
    python tests/support/cnb.py run -e DATABASE_URL=... WORKDIR -- python manage.py migrate
    python tests/support/cnb.py start -e DATABASE_URL=... WORKDIR web   # until Ctrl-C
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

if __package__ in (None, ""):  # run as a script: make the `support` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.heroku import (  # noqa: E402
    REPO,
    EmulatorError,
    copy_tree_linked,
    find_uv,
    python_install,
)
from support.launched import LaunchedProcess  # noqa: E402
from support.procs import free_port  # noqa: E402

BUILDPACK_DIR = REPO
DETECT_PASS, DETECT_FAIL = 0, 100

# The build and run images' PATH (heroku/builder:24, heroku/heroku:24).
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Where a layer's directories go (buildpack.md, "Layer Paths"; lifecycle env/build.go,
# env/launch.go).
BUILD_ROOT_DIRS = {
    "bin": ("PATH",),
    "lib": ("LD_LIBRARY_PATH", "LIBRARY_PATH"),
    "include": ("CPATH",),
    "pkgconfig": ("PKG_CONFIG_PATH",),
}
LAUNCH_ROOT_DIRS = {"bin": ("PATH",), "lib": ("LD_LIBRARY_PATH",)}
PATH_VARIABLES = {name for names in BUILD_ROOT_DIRS.values() for name in names}

# The mtime the exporter gives every file of a layer (1980-01-01T00:00:01Z).
EXPORT_MTIME = 315532801

# heroku/python's checks.rs: a build whose environment sets one of these fails.
HEROKU_PYTHON_FORBIDDEN = (
    "PIP_CACHE_DIR",
    "PIP_PREFIX",
    "PIP_PYTHON",
    "PIP_ROOT",
    "PIP_TARGET",
    "PIP_USER",
    "POETRY_CACHE_DIR",
    "POETRY_DATA_DIR",
    "POETRY_HOME",
    "POETRY_VIRTUALENVS_CREATE",
    "POETRY_VIRTUALENVS_IN_PROJECT",
    "POETRY_VIRTUALENVS_USE_POETRY_PYTHON",
    "PYTHONHOME",
    "PYTHONINSPECT",
    "PYTHONNOUSERSITE",
    "PYTHONPLATLIBDIR",
    "PYTHONUSERBASE",
    "UV_CACHE_DIR",
    "UV_LINK_MODE",
    "UV_MANAGED_PYTHON",
    "UV_NO_CACHE",
    "UV_NO_MANAGED_PYTHON",
    "UV_PROJECT",
    "UV_PROJECT_ENVIRONMENT",
    "UV_PYTHON",
    "UV_PYTHON_DOWNLOADS",
    "UV_PYTHON_PREFERENCE",
    "VIRTUAL_ENV",
)


def network_env() -> dict[str, str]:
    """What this machine needs to reach the package index, and nothing else of its environment.

    Builds reach the index through a TLS-intercepting proxy here, whose CA is
    in the bundle SSL_CERT_FILE names (uv and Python's ssl read it) and
    PIP_CERT names (pip reads it; pip does not read SSL_CERT_FILE). A Heroku
    build reaches PyPI with neither. Passed to detect, build and the
    heroku/python stand-in's uv; never to a launched process.
    """
    return {
        name: os.environ[name] for name in ("SSL_CERT_FILE", "PIP_CERT") if os.environ.get(name)
    }


def escape_id(buildpack_id: str) -> str:
    """The directory name of a buildpack's layers: its id with / as _ (lifecycle EscapeID)."""
    return buildpack_id.replace("/", "_")


def target_env() -> dict[str, str]:
    """CNB_TARGET_*: this machine stands in for the build and run images."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    release = platform.freedesktop_os_release()
    return {
        "CNB_TARGET_OS": "linux",
        "CNB_TARGET_ARCH": arch,
        "CNB_TARGET_DISTRO_NAME": release.get("ID", ""),
        "CNB_TARGET_DISTRO_VERSION": release.get("VERSION_ID", ""),
    }


# -- the environment modification rules ------------------------------------------


def apply_root_dirs(
    env: dict[str, str], layer: Path, root_dirs: Mapping[str, Sequence[str]]
) -> None:
    """Prepend the layer's bin/, lib/... to PATH and friends, with ':' (lifecycle AddRootDir)."""
    for child, names in root_dirs.items():
        path = layer / child
        if path.is_dir():
            for name in names:
                env[name] = str(path) + (":" + env[name] if env.get(name) else "")


def apply_env_dir(env: dict[str, str], env_dir: Path) -> None:
    """Apply one env/, env.build/, env.launch/ or env.launch/<process>/ directory.

    The variable is the file name up to the first period; the suffix says
    what to do: none or .override sets it, .default sets it only if it is
    empty, .prepend/.append join it to the current value with the contents
    of NAME.delim in the same directory, or with nothing when there is no
    .delim file (and no delimiter at all when the current value is empty).
    Contents are used as they are. Files in name order; other suffixes
    (.delim among them) do nothing by themselves.
    """
    if not env_dir.is_dir():
        return
    for path in sorted(env_dir.iterdir()):
        if path.is_dir():
            continue
        name, _, action = path.name.partition(".")
        value = path.read_text()
        delim_file = env_dir / f"{name}.delim"
        delim = delim_file.read_text() if delim_file.is_file() else ""
        current = env.get(name, "")
        if action in ("", "override"):
            env[name] = value
        elif action == "default":
            if not current:
                env[name] = value
        elif action == "prepend":
            env[name] = value + (delim + current if current else "")
        elif action == "append":
            env[name] = (current + delim if current else "") + value
        # .delim and unknown suffixes: nothing


def apply_platform_env(env: dict[str, str], platform_dir: Path) -> None:
    """The user's variables (<platform>/env/NAME) into a detect or build environment.

    A path variable gets the user's value prepended with ':'; any other is
    overridden (buildpack.md, "Provided by the Platform").
    """
    env_dir = platform_dir / "env"
    if not env_dir.is_dir():
        return
    for path in sorted(env_dir.iterdir()):
        if path.is_file():
            value = path.read_text()
            if path.name in PATH_VARIABLES and env.get(path.name):
                value = value + ":" + env[path.name]
            env[path.name] = value


def layer_types(layer: Path) -> dict[str, bool]:
    """The [types] of <layer>.toml; all false when it has none (the spec's default)."""
    toml = layer.with_name(layer.name + ".toml")
    types = tomllib.loads(toml.read_text()).get("types", {}) if toml.is_file() else {}
    return {kind: bool(types.get(kind, False)) for kind in ("launch", "build", "cache")}


def toml_value(value: Any) -> str:
    """One TOML value: a string, boolean, integer or list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_tables(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """Tables of scalar values, e.g. {"types": {"launch": True}, "metadata": {...}}."""
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in table.items())
        lines.append("")
    return "\n".join(lines)


def toml_array_of_tables(name: str, items: Sequence[Mapping[str, Any]]) -> str:
    return "".join(
        f"[[{name}]]\n"
        + "".join(f"{key} = {toml_value(value)}\n" for key, value in item.items())
        + "\n"
        for item in items
    )


def strip_types(toml_path: Path) -> None:
    """Keep a restored <layer>.toml's metadata, without [types] (the restorer's rule)."""
    data = tomllib.loads(toml_path.read_text())
    metadata = data.get("metadata", {})
    toml_path.write_text(toml_tables({"metadata": metadata}) if metadata else "")


# -- buildpacks --------------------------------------------------------------------


@dataclass
class DetectResult:
    status: int
    output: str
    plan: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildContext:
    """What the lifecycle gives one buildpack's build."""

    app_dir: Path
    layers_dir: Path
    platform_dir: Path
    plan_path: Path
    env: dict[str, str]


class Buildpack(Protocol):
    id: str
    api: str
    clear_env: bool

    def detect(
        self, app_dir: Path, platform_dir: Path, plan_path: Path, env: dict[str, str]
    ) -> DetectResult: ...

    def build(self, context: BuildContext) -> tuple[int, str]: ...


class DirectoryBuildpack:
    """A buildpack on disk (buildpack.toml, bin/detect, bin/build), run as the lifecycle runs it."""

    def __init__(self, path: Path = BUILDPACK_DIR) -> None:
        self.path = Path(path)
        descriptor = tomllib.loads((self.path / "buildpack.toml").read_text())
        self.api = str(descriptor["api"])
        self.id = descriptor["buildpack"]["id"]
        self.version = descriptor["buildpack"]["version"]
        self.clear_env = bool(descriptor["buildpack"].get("clear-env", False))
        self.descriptor = descriptor

    def detect(
        self, app_dir: Path, platform_dir: Path, plan_path: Path, env: dict[str, str]
    ) -> DetectResult:
        done = subprocess.run(
            [str(self.path / "bin" / "detect"), str(platform_dir), str(plan_path)],
            cwd=app_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
        plan = tomllib.loads(plan_path.read_text()) if done.returncode == 0 else {}
        return DetectResult(done.returncode, done.stdout, plan)

    def build(self, context: BuildContext) -> tuple[int, str]:
        done = subprocess.run(
            [
                str(self.path / "bin" / "build"),
                str(context.layers_dir),
                str(context.platform_dir),
                str(context.plan_path),
            ],
            cwd=context.app_dir,
            env=context.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=900,
        )
        return done.returncode, done.stdout


def _run(command: Sequence[str], env: Mapping[str, str], cwd: Path, log: list[str]) -> bool:
    done = subprocess.run(
        list(command),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    log.extend("       " + line for line in done.stdout.splitlines())
    if done.returncode != 0:
        log.append(f" !     {Path(command[0]).name} exited with status {done.returncode}")
    return done.returncode == 0


def _layer(
    context: BuildContext,
    name: str,
    *,
    launch: bool,
    build: bool,
    cache: bool,
    metadata: Mapping[str, str],
) -> tuple[Path, bool]:
    """A layer to fill, or the one the cache restored when its metadata still matches.

    Returns (path, reused). Writes <layer>.toml with the types and metadata.
    """
    layer = context.layers_dir / name
    toml = context.layers_dir / f"{name}.toml"
    restored = tomllib.loads(toml.read_text()).get("metadata", {}) if toml.is_file() else None
    reused = layer.is_dir() and restored == dict(metadata)
    if not reused:
        shutil.rmtree(layer, ignore_errors=True)
        layer.mkdir(parents=True)
    toml.write_text(
        toml_tables(
            {
                "types": {"launch": launch, "build": build, "cache": cache},
                "metadata": dict(metadata),
            }
        )
    )
    return layer, reused


def _env_file(layer: Path, scope: str, name: str, value: str) -> None:
    (layer / scope).mkdir(parents=True, exist_ok=True)
    (layer / scope / name).write_text(value)


def _with_layer(env: dict[str, str], layer: Path) -> dict[str, str]:
    """The build environment with this layer applied, as the stand-in uses it after writing it."""
    env = dict(env)
    apply_root_dirs(env, layer, BUILD_ROOT_DIRS)
    apply_env_dir(env, layer / "env")
    apply_env_dir(env, layer / "env.build")
    return env


def _uv_env(env: Mapping[str, str]) -> dict[str, str]:
    """uv's environment in the stand-in: the build's, the index reachable, this machine's cache."""
    return {
        **env,
        **network_env(),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
        "UV_LINK_MODE": "copy",
        "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR")
        or os.path.join(os.path.expanduser("~"), ".cache", "uv"),
    }


def _install_pip(
    python: str,
    python_layer: Path,
    pip_layer: Path,
    env: Mapping[str, str],
    app: Path,
    log: list[str],
) -> bool:
    """pip into the pip layer as a user install (PYTHONUSERBASE), as heroku/python does.

    From the pip wheel the standard library bundles, with nothing downloaded;
    a Python without it (Debian's strips it) gets pip with uv instead.
    """
    wheel = next(python_layer.glob("lib/python3.*/ensurepip/_bundled/pip-*.whl"), None)
    if wheel is not None:
        return _run(
            [
                python,
                f"{wheel}/pip",
                "install",
                "--isolated",
                "--no-cache-dir",
                "--no-index",
                "--no-input",
                "--quiet",
                "--user",
                "--root-user-action=ignore",
                "--no-warn-script-location",
                str(wheel),
            ],
            env,
            app,
            log,
        )
    return _run(
        [
            find_uv(),
            "pip",
            "install",
            "--quiet",
            "--python",
            python,
            "--prefix",
            str(pip_layer),
            "pip",
        ],
        _uv_env(env),
        app,
        log,
    )


class HerokuPython:
    """Stand-in for heroku/python's CNB (heroku/buildpacks-python): see the module's docstring."""

    id = "heroku/python"
    api = "0.10"
    clear_env = False
    KNOWN_FILES = (
        ".python-version",
        "manage.py",
        "Pipfile",
        "poetry.lock",
        "pyproject.toml",
        "requirements.txt",
        "runtime.txt",
        "setup.py",
        "uv.lock",
    )

    def __init__(self, python_home: Path | None = None) -> None:
        self.python_home = python_home

    def detect(
        self, app_dir: Path, platform_dir: Path, plan_path: Path, env: dict[str, str]
    ) -> DetectResult:
        if any((app_dir / name).exists() for name in self.KNOWN_FILES):
            return DetectResult(DETECT_PASS, "")
        return DetectResult(DETECT_FAIL, "No supported Python package manager files found\n")

    def build(self, context: BuildContext) -> tuple[int, str]:
        log = ["", "## Heroku Python (stand-in)"]
        forbidden = [name for name in HEROKU_PYTHON_FORBIDDEN if name in context.env]
        if forbidden:
            log.append(" !     Unsafe environment variables found: " + ", ".join(forbidden))
            return 1, "\n".join(log) + "\n"
        app = context.app_dir
        managers = [
            name
            for name, marker in (("pip", "requirements.txt"), ("uv", "uv.lock"))
            if (app / marker).is_file()
        ]
        if len(managers) != 1:
            log.append(f" !     Expected exactly one of requirements.txt and uv.lock: {managers}")
            return 1, "\n".join(log) + "\n"
        manager = managers[0]
        env = dict(context.env)

        install = python_install(self.python_home)
        python_layer, reused = _layer(
            context,
            "python",
            launch=True,
            build=True,
            cache=True,
            metadata={"python": install.name},
        )
        log.append("- Using cached Python" if reused else f"- Installing Python ({install.name})")
        if not reused:
            shutil.rmtree(python_layer)
            copy_tree_linked(install, python_layer)
        short = next(python_layer.glob("lib/python3.*/os.py")).parent.name
        _env_file(python_layer, "env", "PYTHONUNBUFFERED.override", "1")
        _env_file(python_layer, "env.build", "SOURCE_DATE_EPOCH.default", "315532801")
        for name, path in (("CPATH", f"include/{short}"), ("PKG_CONFIG_PATH", "lib/pkgconfig")):
            _env_file(python_layer, "env.build", f"{name}.prepend", str(python_layer / path))
            _env_file(python_layer, "env.build", f"{name}.delim", ":")
        env = _with_layer(env, python_layer)
        python = str(python_layer / "bin" / "python")

        if manager == "pip":
            pip_layer, reused = _layer(
                context,
                "pip",
                launch=False,
                build=True,
                cache=True,
                metadata={"python": install.name},
            )
            _env_file(pip_layer, "env.build", "PIP_DISABLE_PIP_VERSION_CHECK.override", "1")
            _env_file(pip_layer, "env.build", "PYTHONUSERBASE.override", str(pip_layer))
            if not reused:
                log.append("- Installing pip")
                if not _install_pip(
                    python, python_layer, pip_layer, _with_layer(env, pip_layer), app, log
                ):
                    return 1, "\n".join(log) + "\n"
            env = _with_layer(env, pip_layer)
        else:
            uv_layer, reused = _layer(
                context, "uv", launch=False, build=True, cache=True, metadata={"uv": "machine"}
            )
            if not reused:
                (uv_layer / "bin").mkdir()
                shutil.copy2(find_uv(), uv_layer / "bin" / "uv")
            env = _with_layer(env, uv_layer)

        venv_layer, reused = _layer(
            context,
            "venv",
            launch=True,
            build=True,
            cache=manager == "uv",
            metadata={"python": install.name},
        )
        _env_file(venv_layer, "env", "VIRTUAL_ENV.override", str(venv_layer))
        if manager == "pip":
            _env_file(venv_layer, "env.build", "PIP_PYTHON.override", str(venv_layer))
        else:
            _env_file(venv_layer, "env.build", "UV_PROJECT_ENVIRONMENT.override", str(venv_layer))
        if reused:
            log.append("- Using cached virtual environment")
        else:
            log.append("- Creating virtual environment")
            if not _run([python, "-m", "venv", "--without-pip", str(venv_layer)], env, app, log):
                return 1, "\n".join(log) + "\n"
        env = _with_layer(env, venv_layer)

        # The app's packages, with uv either way (the stand-in for `pip install
        # -r requirements.txt`), from this machine's uv cache.
        uv_env = _uv_env(env)
        if manager == "pip":
            log.append("- Installing dependencies (stand-in for 'pip install -r requirements.txt')")
            command = [
                find_uv(),
                "pip",
                "install",
                "--quiet",
                "--python",
                str(venv_layer / "bin" / "python"),
                "-r",
                "requirements.txt",
            ]
        else:
            log.append("- Running 'uv sync --locked --no-default-groups'")
            command = [
                str(uv_layer / "bin" / "uv"),
                "sync",
                "--locked",
                "--no-default-groups",
                "--quiet",
            ]
        if not _run(command, uv_env, app, log):
            return 1, "\n".join(log) + "\n"
        return 0, "\n".join(log) + "\n"


class HerokuProcfile:
    """Stand-in for heroku/procfile: each Procfile line a process ``bash -c <command>``."""

    id = "heroku/procfile"
    api = "0.10"
    clear_env = False

    def detect(
        self, app_dir: Path, platform_dir: Path, plan_path: Path, env: dict[str, str]
    ) -> DetectResult:
        if (app_dir / "Procfile").is_file():
            return DetectResult(DETECT_PASS, "")
        return DetectResult(DETECT_FAIL, "No Procfile\n")

    def build(self, context: BuildContext) -> tuple[int, str]:
        processes = []
        for line in (context.app_dir / "Procfile").read_text().splitlines():
            name, sep, command = line.partition(":")
            if sep and name.strip() and not name.lstrip().startswith("#"):
                processes.append(
                    {
                        "type": name.strip(),
                        "command": ["bash", "-c"],
                        "args": [command.strip()],
                        "default": name.strip() == "web",
                    }
                )
        if len(processes) == 1:
            processes[0]["default"] = True
        (context.layers_dir / "launch.toml").write_text(
            toml_array_of_tables("processes", processes)
        )
        return 0, "\n## Procfile (stand-in)\n" + "".join(
            f"- {p['type']}: {p['args'][0]}\n" for p in processes
        )


def project_group(project_toml: Path = REPO / "project.toml") -> list[str]:
    """The buildpack ids the example project.toml lists, in order."""
    data = tomllib.loads(project_toml.read_text())
    return [entry["id"] for entry in data["io"]["buildpacks"]["group"]]


def default_group(python: HerokuPython | None = None) -> list[Buildpack]:
    """The group of project.toml: heroku/python, djpool, heroku/procfile."""
    known: dict[str, Buildpack] = {}
    for buildpack in (
        python or HerokuPython(),
        DirectoryBuildpack(BUILDPACK_DIR),
        HerokuProcfile(),
    ):
        known[buildpack.id] = buildpack
    return [known[buildpack_id] for buildpack_id in project_group()]


def _reserve_fd(fd: int) -> int:
    """Open /dev/null as ``fd`` if that fd is free; the fd to close afterwards, or -1."""
    try:
        os.fstat(fd)
        return -1
    except OSError:
        null = os.open(os.devnull, os.O_RDONLY)
        if null == fd:
            return null
        os.dup2(null, fd)
        os.close(null)
        return fd


# -- the lifecycle -------------------------------------------------------------------


@dataclass
class CnbBuildResult:
    """One build: ``ok`` when detect and every build passed; the log as the platform shows it."""

    ok: bool
    log: str
    detected: list[str] = field(default_factory=list)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)


def _plan_ok(plans: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a trial's plans (one per buildpack, in order) satisfy each other (buildpack.md)."""
    for index, plan in enumerate(plans):
        earlier = {e["name"] for p in plans[: index + 1] for e in p.get("provides", [])}
        later = {e["name"] for p in plans[index:] for e in p.get("requires", [])}
        if any(e["name"] not in earlier for e in plan.get("requires", [])):
            return False
        if any(e["name"] not in later for e in plan.get("provides", [])):
            return False
    return True


def resolve_plans(plans: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]] | None:
    """The first trial (top level, then each ``or``, left to right) that works, or None."""
    options = [
        [{"requires": p.get("requires", []), "provides": p.get("provides", [])}, *p.get("or", [])]
        for p in plans
    ]
    for trial in itertools.product(*options):
        if _plan_ok(trial):
            return list(trial)
    return None


class CnbApp:
    """An app built by the emulated lifecycle and launched from its image.

    Parameters:
        source: the app's source; several directories are laid over each other in order.
        workdir: ``workspace/`` (app dir), ``layers/``, ``platform/env/`` (the
            config vars as the platform gives them to builds), ``cache/`` (the
            layer cache), ``home/`` (HOME in every phase), ``logs/``.
        config: the config vars: the platform env of builds and the environment of processes.
        group: the buildpacks in order (default: project.toml's group with the stand-ins).
    """

    def __init__(
        self,
        source: Path | Sequence[Path],
        workdir: Path,
        config: Mapping[str, str] | None = None,
        *,
        group: Sequence[Buildpack] | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.sources = (
            [Path(source)] if isinstance(source, (str, Path)) else [Path(s) for s in source]
        )
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.app_dir = self.workdir / "workspace"
        self.layers_dir = self.workdir / "layers"
        self.platform_dir = self.workdir / "platform"
        self.cache_dir = Path(cache_dir) if cache_dir else self.workdir / "cache"
        self.home = self.workdir / "home"
        self.log_dir = self.workdir / "logs"
        self.config: dict[str, str] = dict(config or {})
        self.group: list[Buildpack] = list(group) if group is not None else default_group()
        self.built_group: list[Buildpack] = []
        self.processes: dict[str, dict[str, Any]] = {}
        self.builds: list[CnbBuildResult] = []

    # -- build ---------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        """What the lifecycle passes on of its own environment: the build image's HOME and PATH."""
        self.home.mkdir(exist_ok=True)
        return {"PATH": IMAGE_PATH, "HOME": str(self.home)}

    def phase_env(
        self, buildpack: Buildpack, layered: Mapping[str, str], cnb: Mapping[str, str]
    ) -> dict[str, str]:
        """One buildpack's detect or build environment (lifecycle WithOverrides + CNB_*)."""
        env = dict(layered)
        if not buildpack.clear_env:
            apply_platform_env(env, self.platform_dir)
        env.update(network_env())
        env.update(cnb)
        env.update(target_env())
        return env

    def build(self) -> CnbBuildResult:
        """Detect, restore, build and export; on failure the previous image stays."""
        previous = {name: self.workdir / f"{name}.previous" for name in ("workspace", "layers")}
        for name, path in previous.items():
            shutil.rmtree(path, ignore_errors=True)
            current = self.workdir / name
            if current.exists():
                current.rename(path)
        log: list[str] = []
        result = CnbBuildResult(False, "")
        ok = False
        try:
            ok = self._build(log, result, previous["layers"])
        finally:
            result.ok = ok
            result.log = "".join(log)
            self._finish(result.ok, previous)
            self.builds.append(result)
        return result

    def _build(self, log: list[str], result: CnbBuildResult, old_layers: Path) -> bool:
        self.app_dir.mkdir()
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".venv")
        for source in self.sources:
            shutil.copytree(source, self.app_dir, dirs_exist_ok=True, ignore=ignore)
        shutil.rmtree(self.platform_dir, ignore_errors=True)
        (self.platform_dir / "env").mkdir(parents=True)
        for name, value in self.config.items():
            (self.platform_dir / "env" / name).write_text(value)
        self.layers_dir.mkdir()

        # detect
        log.append("===> DETECTING\n")
        plans = []
        for buildpack in self.group:
            plan_dir = self.workdir / f"plan_{secrets.token_hex(4)}"
            plan_dir.mkdir()
            plan_path = plan_dir / "plan.toml"
            plan_path.touch()
            env = self.phase_env(
                buildpack,
                self.base_env(),
                {
                    "CNB_BUILDPACK_DIR": str(getattr(buildpack, "path", self.workdir)),
                    "CNB_PLATFORM_DIR": str(self.platform_dir),
                    "CNB_BUILD_PLAN_PATH": str(plan_path),
                },
            )
            result.envs[f"detect:{buildpack.id}"] = env
            detected = buildpack.detect(self.app_dir, self.platform_dir, plan_path, env)
            shutil.rmtree(plan_dir)
            log.append(detected.output)
            if detected.status == DETECT_FAIL:
                log.append(f"======== {buildpack.id}: fail (100) ========\n")
                log.append("ERROR: No buildpack groups passed detection.\n")
                return False
            if detected.status != DETECT_PASS:
                log.append(f"ERROR: {buildpack.id} detect exited with status {detected.status}\n")
                return False
            plans.append(detected.plan)
            result.detected.append(buildpack.id)
        trial = resolve_plans(plans)
        if trial is None:
            log.append("ERROR: the build plans of the group do not resolve (requires/provides)\n")
            return False
        log.append("".join(f"{bp.id}\n" for bp in self.group))

        # restore (the analyzer and restorer)
        self._restore(old_layers)

        # build
        log.append("===> BUILDING\n")
        layered = self.base_env()
        for index, buildpack in enumerate(self.group):
            bp_layers = self.layers_dir / escape_id(buildpack.id)
            bp_layers.mkdir(exist_ok=True)
            entries = [
                entry
                for plan in trial[index:]
                for entry in plan.get("requires", [])
                if entry["name"] in {p["name"] for p in trial[index].get("provides", [])}
            ]
            plan_path = self.workdir / f"bp_plan_{escape_id(buildpack.id)}.toml"
            plan_path.write_text(
                toml_array_of_tables("entries", [{"name": entry["name"]} for entry in entries])
            )
            env = self.phase_env(
                buildpack,
                layered,
                {
                    "CNB_BUILDPACK_DIR": str(getattr(buildpack, "path", self.workdir)),
                    "CNB_PLATFORM_DIR": str(self.platform_dir),
                    "CNB_LAYERS_DIR": str(bp_layers),
                    "CNB_BP_PLAN_PATH": str(plan_path),
                },
            )
            result.envs[f"build:{buildpack.id}"] = env
            status, output = buildpack.build(
                BuildContext(self.app_dir, bp_layers, self.platform_dir, plan_path, env)
            )
            plan_path.unlink()
            log.append(output)
            if status != 0:
                log.append(f"ERROR: failed to build: {buildpack.id} exited with status {status}\n")
                return False
            for toml in sorted(bp_layers.glob("*.toml")):
                if toml.name in ("launch.toml", "build.toml", "store.toml"):
                    continue
                layer = toml.with_suffix("")
                types = layer_types(layer)
                if not any(types.values()):
                    if layer.exists():
                        layer.rename(layer.with_name(layer.name + ".ignore"))
                elif types["build"]:
                    layered = _with_layer(layered, layer)
        self.built_group = list(self.group)

        # export
        log.append("===> EXPORTING\n")
        self._export()
        return True

    def _cache_path(self, buildpack: Buildpack) -> Path:
        return self.cache_dir / escape_id(buildpack.id)

    def _restore(self, old_layers: Path) -> None:
        """Cache layers (dir, metadata) from the cache; launch layers' metadata from the image."""
        for buildpack in self.group:
            bp_layers = self.layers_dir / escape_id(buildpack.id)
            cached = self._cache_path(buildpack)
            if cached.is_dir():
                for toml in sorted(cached.glob("*.toml")):
                    bp_layers.mkdir(parents=True, exist_ok=True)
                    layer = toml.with_suffix("")
                    shutil.copy2(toml, bp_layers / toml.name)
                    strip_types(bp_layers / toml.name)
                    if layer.is_dir():
                        copy_tree_linked(layer, bp_layers / layer.name)
            old = old_layers / escape_id(buildpack.id)
            if old.is_dir():
                for toml in sorted(old.glob("*.toml")):
                    if toml.name == "launch.toml" or (bp_layers / toml.name).exists():
                        continue
                    if layer_types(toml.with_suffix(""))["launch"]:
                        bp_layers.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(toml, bp_layers / toml.name)
                        strip_types(bp_layers / toml.name)

    def _export(self) -> None:
        """Save cache layers; keep only launch layers in the image; fixed mtimes; processes."""
        self.processes = {}
        for buildpack in self.group:
            bp_layers = self.layers_dir / escape_id(buildpack.id)
            cached = self._cache_path(buildpack)
            shutil.rmtree(cached, ignore_errors=True)
            launch_toml = bp_layers / "launch.toml"
            if launch_toml.is_file():
                for process in tomllib.loads(launch_toml.read_text()).get("processes", []):
                    self.processes[process["type"]] = process
            for entry in sorted(bp_layers.iterdir()):
                if entry.is_dir() and not entry.name.endswith(".ignore"):
                    types = layer_types(entry)
                    if types["cache"]:
                        cached.mkdir(parents=True, exist_ok=True)
                        copy_tree_linked(entry, cached / entry.name)
                        shutil.copy2(
                            entry.with_name(entry.name + ".toml"), cached / f"{entry.name}.toml"
                        )
                    if not types["launch"]:
                        shutil.rmtree(entry)
                elif entry.is_dir():  # <layer>.ignore
                    shutil.rmtree(entry)
            for entry in sorted(bp_layers.glob("*.toml")):
                if entry.name != "launch.toml" and not layer_types(entry.with_suffix(""))["launch"]:
                    entry.unlink()
        for root in (self.app_dir, self.layers_dir):
            for directory, dirs, files in os.walk(root):
                for name in files + dirs:
                    os.utime(
                        os.path.join(directory, name),
                        (EXPORT_MTIME, EXPORT_MTIME),
                        follow_symlinks=False,
                    )

    def _finish(self, ok: bool, previous: Mapping[str, Path]) -> None:
        if ok:
            (self.workdir / "cnb.json").write_text(
                json.dumps(
                    {
                        "sources": [str(source.resolve()) for source in self.sources],
                        "config": self.config,
                        "group": [bp.id for bp in self.built_group],
                        "processes": self.processes,
                    }
                )
            )
        for name, path in previous.items():
            current = self.workdir / name
            if ok:
                shutil.rmtree(path, ignore_errors=True)
            else:
                shutil.rmtree(current, ignore_errors=True)
                if path.exists():
                    path.rename(current)

    # -- launch --------------------------------------------------------------------

    def launch_env(
        self,
        process_type: str | None,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> dict[str, str]:
        """The environment the launcher gives a process: base, config vars, layers, exec.d."""
        if not self.built_group:
            raise EmulatorError(f"nothing is built in {self.workdir}: build first")
        self.home.mkdir(exist_ok=True)
        result = {"PATH": IMAGE_PATH, "HOME": str(self.home), **self.config, **(env or {})}
        if port is not None:
            result["PORT"] = str(port)
        for buildpack in self.built_group:
            layers = [
                p
                for p in sorted((self.layers_dir / escape_id(buildpack.id)).glob("*"))
                if p.is_dir()
            ]
            for layer in layers:
                apply_root_dirs(result, layer, LAUNCH_ROOT_DIRS)
            for layer in layers:
                apply_env_dir(result, layer / "env")
                apply_env_dir(result, layer / "env.launch")
                if process_type:
                    apply_env_dir(result, layer / "env.launch" / process_type)
        for scope in ("exec.d", f"exec.d/{process_type}" if process_type else None):
            if scope is None:
                continue
            for buildpack in self.built_group:
                for layer in sorted((self.layers_dir / escape_id(buildpack.id)).glob("*")):
                    directory = layer / scope
                    if directory.is_dir():
                        for program in sorted(p for p in directory.iterdir() if p.is_file()):
                            result.update(self.exec_d(program, result))
        return result

    def exec_d(self, program: Path, env: Mapping[str, str]) -> dict[str, str]:
        """Run one exec.d program with fd 3 open for writing; the variables its TOML sets."""
        # fd 3 of this process stays taken meanwhile, so that nothing Popen opens
        # for itself (its exec error pipe) can be the fd the child's pipe goes to.
        reserved = _reserve_fd(3)
        read_end, write_end = os.pipe()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"exec.d-{program.name}-{secrets.token_hex(4)}.log"
        try:
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [str(program)],
                    env=dict(env),
                    cwd=self.app_dir,
                    pass_fds=(3,),
                    preexec_fn=lambda: os.dup2(write_end, 3),  # the only one forking now
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            os.close(write_end)
            write_end = -1
            with os.fdopen(read_end, "rb") as pipe:
                read_end = -1
                output = pipe.read().decode()
            status = process.wait(timeout=60)
        finally:
            for fd in (read_end, write_end, reserved):
                if fd >= 0:
                    os.close(fd)
        logged = log_path.read_text(errors="replace")
        if status != 0:
            raise EmulatorError(f"exec.d program {program} exited with status {status}: {logged}")
        values = tomllib.loads(output)
        return {str(name): str(value) for name, value in values.items()}

    def command_for(self, process_type: str) -> list[str]:
        process = self.processes[process_type]
        return [*process["command"], *process.get("args", [])]

    def run(
        self, command: str, *, env: Mapping[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """A one-off process (``heroku run`` on Fir): ``bash -c command``, no process type."""
        launch = self.launch_env(None, env, free_port())
        return subprocess.run(
            [self._lookup("bash", launch), "-c", command],
            cwd=self.app_dir,
            env=launch,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def launch(
        self, process_type: str, *, env: Mapping[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run a process of launch.toml to its end (the ``release`` process, say)."""
        launch = self.launch_env(process_type, env, free_port())
        command = self.command_for(process_type)
        command[0] = self._lookup(command[0], launch)
        return subprocess.run(
            command,
            cwd=self.app_dir,
            env=launch,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(
        self,
        process_type: str = "web",
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
    ) -> CnbProcess:
        """Launch a process of launch.toml; for web, wait until it answers HTTP."""
        return CnbProcess(self, process_type, env).start(timeout)

    @staticmethod
    def _lookup(name: str, env: Mapping[str, str]) -> str:
        found = shutil.which(name, path=env.get("PATH", ""))
        if found is None:
            raise EmulatorError(f"{name} is not on the launch PATH {env.get('PATH')}")
        return found


class CnbProcess(LaunchedProcess):
    """One launched process of the built app."""

    def __init__(
        self, app: CnbApp, process_type: str, env: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(process_type, app.log_dir / f"{process_type}-{secrets.token_hex(4)}.log")
        self.app = app
        self.process_type = process_type
        extra = dict(env or {})
        # Local only: gunicorn would bind 0.0.0.0:$PORT.
        if process_type == "web" and "GUNICORN_CMD_ARGS" not in {**app.config, **extra}:
            extra["GUNICORN_CMD_ARGS"] = f"--bind 127.0.0.1:{self.port} --access-logfile -"
        self.env = app.launch_env(process_type, extra, self.port)

    def start(self, timeout: float = 60) -> CnbProcess:
        command = self.app.command_for(self.process_type)
        command[0] = self.app._lookup(command[0], self.env)
        return self.launch(
            command, self.app.app_dir, self.env, web=self.process_type == "web", timeout=timeout
        )


# -- command line ----------------------------------------------------------------------


def load(workdir: Path) -> CnbApp:
    """The app last built in ``workdir`` (by ``build`` below), with the default group."""
    if not (workdir / "cnb.json").is_file():
        raise EmulatorError(f"nothing is built in {workdir}: build first")
    state = json.loads((workdir / "cnb.json").read_text())
    app = CnbApp([Path(s) for s in state["sources"]], workdir, state["config"])
    if [bp.id for bp in app.group] != state["group"]:
        raise EmulatorError(f"{workdir} was built with another group: {state['group']}")
    app.built_group = list(app.group)
    app.processes = state["processes"]
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tests/support/cnb.py",
        description="Build an app with project.toml's group (heroku/python and heroku/procfile "
        "stand-ins, this CNB) as the CNB lifecycle would, then launch its processes.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build APP_DIR(s) into WORKDIR")
    build.add_argument("workdir", type=Path)
    build.add_argument("sources", type=Path, nargs="+", help="laid over each other in order")
    build.add_argument("--config", action="append", default=[], metavar="NAME=VALUE")
    run = commands.add_parser("run", help="a one-off process in the built app")
    run.add_argument("workdir", type=Path)
    run.add_argument("--env", "-e", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    start = commands.add_parser("start", help="launch a process of launch.toml until Ctrl-C")
    start.add_argument("workdir", type=Path)
    start.add_argument("process_type", nargs="?", default="web")
    start.add_argument("--env", "-e", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)

    if args.command == "build":
        config = dict(item.split("=", 1) for item in args.config)
        result = CnbApp(args.sources, args.workdir, config).build()
        sys.stdout.write(result.log)
        return 0 if result.ok else 1
    app = load(args.workdir.resolve())
    env = dict(item.split("=", 1) for item in args.env)
    if args.command == "run":
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        done = app.run(shlex.join(command), env=env)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        return done.returncode
    process = app.start(args.process_type, env=env)
    print(
        f"{args.process_type} is up at {process.base_url} (log: {process.log_path}); "
        "Ctrl-C stops it",
        flush=True,
    )
    try:
        while process.process is not None and process.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        process.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
