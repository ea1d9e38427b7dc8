"""The tested stacks (Django x driver), each a virtualenv made by tests/setup_env.sh.

A process of a stack is started the way a dyno starts one: the stack's own
Python, settings only from the environment, and (unless ``shim=False``) the
shim directory on PYTHONPATH, as the buildpack's .profile.d script puts it.
The test runner's environment is cleaned first so that nothing of it (its own
PYTHONPATH, a DATABASE_URL, POOL_* variables, PG* variables) leaks in.

The chroot stacks (CHROOT_STACKS) run a Python this machine lacks, inside a
Debian root filesystem that tests/setup_chroots.sh builds under .venv/chroots/.
Their venvs' host-bin/ wrappers (tests/support/chroot.sh) run each script
inside with the same paths, processes and network as outside, so
python_path(), bin_path() and run() hand them out like any other stack's.
Which of them the runtime suite runs on is RUNTIME_STACKS, from
DJPOOL_TEST_STACKS (see extra_stacks()).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from support import logs

REPO = Path(__file__).resolve().parents[2]
SHIM_DIR = REPO / "shim"
APP_DIR = REPO / "tests" / "app"
STACKS_DIR = REPO / ".venv" / "stacks"

STACKS: tuple[str, ...] = ("dj52-psycopg3", "dj52-psycopg2", "dj42-psycopg3", "dj42-psycopg2")
DEFAULT_STACK = "dj52-psycopg3"
# Venvs with more than a stack has, each for its own tests (never parametrised over):
# Django's own test suite (tests/django_suite.py), the worker types (tests/test_compat.py),
# Celery's prefork pool (tests/test_celery.py).
EXTRA_VENVS: tuple[str, ...] = (
    "djsuite-dj52-psycopg3",
    "djsuite-dj52-psycopg2",
    "djsuite-dj42-psycopg3",
    "djsuite-dj42-psycopg2",
    "workers-dj52-psycopg3",
    "workers-dj52-psycopg2",
    "otel-dj52-psycopg3",
    "celery-dj52-psycopg3",
)

# Stacks whose Python runs inside a chroot (tests/setup_chroots.sh), by chroot:
# a new Heroku app's Python 3.14 with Django 6.1 and 6.0, and Python 3.13.
CHROOT_STACKS: dict[str, str] = {
    "py314-dj61-psycopg3": "forky",
    "py314-dj60-psycopg2": "forky",
    "py313-dj52-psycopg3": "trixie",
}
# Django's own test suite on Python 3.14 + Django 6.1, both drivers; Celery's prefork pool.
CHROOT_VENVS: dict[str, str] = {
    "djsuite-py314-dj61-psycopg3": "forky",
    "djsuite-py314-dj61-psycopg2": "forky",
    "celery-py314-dj61-psycopg3": "forky",
}
CHROOTS_DIR = REPO / ".venv" / "chroots"
CHROOT_SH = REPO / "tests" / "support" / "chroot.sh"
# The chroot stacks the runtime suite runs on when DJPOOL_TEST_STACKS is unset.
DEFAULT_EXTRA_STACKS: tuple[str, ...] = ("py314-dj61-psycopg3",)
SETUP_CHROOTS_HINT = "run `bash tests/setup_chroots.sh` (needs root; a few minutes once)"


def extra_stacks(value: str | None = None) -> tuple[str, ...]:
    """The chroot stacks chosen by DJPOOL_TEST_STACKS (read if value is None).

    Unset: DEFAULT_EXTRA_STACKS; ``all``: every chroot stack; ``none`` or
    empty: none; else a comma-separated list of chroot stack names.
    """
    if value is None:
        value = os.environ.get("DJPOOL_TEST_STACKS")
        if value is None:
            return DEFAULT_EXTRA_STACKS
    value = value.strip()
    if value == "all":
        return tuple(CHROOT_STACKS)
    if value in ("", "none"):
        return ()
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in CHROOT_STACKS]
    if unknown:
        raise ValueError(
            f"DJPOOL_TEST_STACKS: unknown stack {', '.join(unknown)}; "
            f"allowed: all, none, or a comma-separated list of "
            f"{', '.join(CHROOT_STACKS)}"
        )
    return names


# The stacks the runtime suite (tests/test_runtime.py) is parametrised over.
RUNTIME_STACKS: tuple[str, ...] = STACKS + extra_stacks()


def chroot_of(stack: str) -> str | None:
    """The chroot a stack's Python runs in (None: this machine's own Python)."""
    return CHROOT_STACKS.get(stack) or CHROOT_VENVS.get(stack)


def python_version(stack: str) -> tuple[int, int]:
    """The stack's Python version, from its name (py314 -> (3, 14); others run 3.11)."""
    if stack.startswith(("py", "djsuite-py", "workers-py")):
        digits = stack.split("py", 1)[1].split("-", 1)[0]
        return int(digits[0]), int(digits[1:])
    return 3, 11


# Variables of the test runner that must not reach a stack's process.
_DROPPED_PREFIXES = ("POOL_", "DJPOOL_", "APP_", "PG")
_DROPPED = {
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "VIRTUAL_ENV",
    "DATABASE_URL",
    "DJANGO_SETTINGS_MODULE",
    "PYTEST_CURRENT_TEST",
    "PYTEST_ADDOPTS",
}


class Result(NamedTuple):
    """What a stack process did; unpacks as ``returncode, stdout, stderr``."""

    returncode: int
    stdout: str
    stderr: str

    def djpool_lines(self) -> list[str]:
        """The lines the shim printed (they all start with ``djpool:``)."""
        return logs.djpool_lines(self.stderr)


def venv_dir(stack: str) -> Path:
    known = STACKS + EXTRA_VENVS + tuple(CHROOT_STACKS) + tuple(CHROOT_VENVS)
    if stack not in known:
        raise ValueError(
            f"unknown stack {stack!r}; the stacks are "
            f"{', '.join(STACKS + tuple(CHROOT_STACKS))} "
            f"(and the venvs {', '.join(EXTRA_VENVS + tuple(CHROOT_VENVS))})"
        )
    return STACKS_DIR / stack


def _bin_dir(stack: str) -> Path:
    """Where the stack's runnable scripts are: host-bin/ (wrappers) for a chroot stack."""
    return venv_dir(stack) / ("host-bin" if chroot_of(stack) else "bin")


def python_path(stack: str) -> Path:
    """The stack's interpreter; fails with what to run if the venv is missing.

    For a chroot stack, a wrapper that runs the venv's Python inside the chroot
    with the caller's pid and working directory.
    """
    python = _bin_dir(stack) / "python"
    if not python.exists():
        hint = SETUP_CHROOTS_HINT if chroot_of(stack) else "run `bash tests/setup_env.sh`"
        raise FileNotFoundError(f"{python} is missing: {hint}")
    return python


def bin_path(stack: str, name: str) -> Path:
    """A console script of the stack, e.g. ``bin_path(stack, "gunicorn")``."""
    python_path(stack)
    return _bin_dir(stack) / name


def inside_python_path(stack: str) -> Path:
    """The interpreter's path as processes of the stack see it (sys.executable)."""
    return venv_dir(stack) / "bin" / "python"


def stack_env(
    env: Mapping[str, str] | None = None,
    *,
    shim: bool = True,
    app: bool = False,
    pythonpath: Sequence[str | os.PathLike[str]] = (),
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a stack process.

    Parameters:
        env: the process's own variables (DATABASE_URL, POOL_*, APP_*); applied last.
        shim: put ``<repo>/shim`` first on PYTHONPATH (default True).
        app: make tests/app importable and set DJANGO_SETTINGS_MODULE=testproj.settings.
        pythonpath: more directories for PYTHONPATH, after the shim.
        base: the environment to start from (default: the test runner's, cleaned).
    """
    source = os.environ if base is None else base
    result = {
        key: value
        for key, value in source.items()
        if key not in _DROPPED and not key.startswith(_DROPPED_PREFIXES)
    }
    path = [str(SHIM_DIR)] if shim else []
    path += [str(entry) for entry in pythonpath]
    if app:
        path.append(str(APP_DIR))
        result["DJANGO_SETTINGS_MODULE"] = "testproj.settings"
    if path:
        result["PYTHONPATH"] = os.pathsep.join(path)
    result.setdefault("PYTHONUNBUFFERED", "1")
    result.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    result.update(env or {})
    return result


def run(
    stack: str,
    args: Sequence[str | os.PathLike[str]],
    env: Mapping[str, str] | None = None,
    *,
    shim: bool = True,
    app: bool = False,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 60,
    input: str | None = None,
) -> Result:
    """Run the stack's Python with ``args`` (see stack_env for env, shim and app)."""
    completed = subprocess.run(
        [str(python_path(stack)), *map(str, args)],
        env=stack_env(env, shim=shim, app=app),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)


def run_python(
    stack: str,
    code: str,
    env: Mapping[str, str] | None = None,
    *,
    shim: bool = True,
    app: bool = False,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 60,
) -> Result:
    """Run a Python snippet (``python -c code``) in the stack."""
    return run(stack, ["-c", code], env, shim=shim, app=app, cwd=cwd, timeout=timeout)


def run_manage(
    stack: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    shim: bool = True,
    timeout: float = 120,
) -> Result:
    """Run ``manage.py <args>`` of the sample app (tests/app) in the stack."""
    return run(stack, [APP_DIR / "manage.py", *args], env, shim=shim, cwd=APP_DIR, timeout=timeout)


def check(result: Result, what: str = "stack process") -> Result:
    """The result, or an AssertionError with everything the process printed."""
    if result.returncode != 0:
        raise AssertionError(
            f"{what} exited with status {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )
    return result


def chroot_command(
    stack: str, argv: Sequence[str | os.PathLike[str]], cwd: str | os.PathLike[str] | None = None
) -> list[str]:
    """``argv`` run inside the chroot stack's root filesystem (tests/support/chroot.sh).

    The command keeps the caller's pid; ``cwd`` (default: the caller's) must be
    under the repository or /tmp, the only paths of this machine inside.
    """
    name = chroot_of(stack)
    if name is None:
        raise ValueError(f"{stack} runs this machine's Python, not a chroot's")
    root = CHROOTS_DIR / name
    if not (root / "usr" / "bin").is_dir():
        raise FileNotFoundError(f"{root} is missing: {SETUP_CHROOTS_HINT}")
    return [
        "/bin/sh",
        str(CHROOT_SH),
        str(root),
        str(REPO),
        str(cwd or os.getcwd()),
        *map(str, argv),
    ]
