"""Django's own database test suites, with djpool's shim and without, on a real PostgreSQL.

For each stack (Django x driver) and each label, Django's ``tests/runtests.py``
(from the sdist of the very Django version installed in the stack's
``djsuite-<stack>`` venv) runs twice against the same throwaway PostgreSQL
(TLS, scram-sha-256): once with the shim on PYTHONPATH and DATABASE_URL set,
as on a dyno, and once without. A failure counts against djpool only if it
happens with the shim and not without. If any such failure is not in KNOWN,
the label runs once more both ways: a failure seen with the shim both times,
and without it neither time, is djpool's; one seen once is flaky.

    .venv/test/bin/python tests/django_suite.py            # all labels, all four stacks
    .venv/test/bin/python tests/django_suite.py --stacks dj52-psycopg3 --labels basic
    make django-suite                                      # the same as the first line
    # Python 3.14 + Django 6.1 (chroot venvs, bash tests/setup_chroots.sh), small pool:
    .venv/test/bin/python tests/django_suite.py --stacks py314-dj61-psycopg3 \
        py314-dj61-psycopg2 --parallel 2 --pool-size 2

With ``--pool-size N`` the runs have POOL_SIZE=N, as a small dyno sets it. A
test that holds more connections of one alias at once than the pool has then
fails with djpool's "pool ... is exhausted" error; POOL_EXHAUSTION lists those
tests. Such a failure only with the shim counts as exhaustion, apart from
real failures, when the run's output shows that error and the test passes,
with the shim, when run again alone with a pool as big as it needs.

Prints a table per stack and label (tests run, failures with the shim,
without, only with the shim) and lists the failing test ids. Every run's
full output is kept under build/django-suite/. Exits 0 when no failure
happens only with the shim, 1 otherwise.

The sdists are downloaded once with pip (Django ships its tests/ in them)
and cached under .venv/django-tests/. The database role is a superuser, as
in Django's own CI: postgres_tests creates extensions (bloom) that are not
trusted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: find support/

from support import stacks  # noqa: E402
from support.postgres import PostgresServer  # noqa: E402

REPO = stacks.REPO
SETTINGS_DIR = REPO / "tests" / "django_suite_settings"
SETTINGS_MODULE = "djpool_suite_settings"
SOURCE_CACHE = REPO / ".venv" / "django-tests"
LOG_DIR = REPO / "build" / "django-suite"

LABELS: tuple[str, ...] = (
    "backends",
    "transactions",
    "transaction_hooks",
    "select_for_update",
    "queries",
    "basic",
    "timezones",
    "test_runner",
    "postgres_tests",
)
SUITE_ROLE = "djsuite"
# The stacks the suite runs on: the four of this machine's Python, and Python 3.14 +
# Django 6.1 with each driver (venvs djsuite-py314-dj61-*, in the forky chroot).
SUITE_STACKS: tuple[str, ...] = (*stacks.STACKS, "py314-dj61-psycopg3", "py314-dj61-psycopg2")
DEFAULT_DATABASE = "djsuite"
OTHER_DATABASE = "djsuite_other"
RUN_TIMEOUT = 1800.0  # seconds for one label in one mode; a hang fails instead of blocking


# Failures with the shim that are understood: test id -> Known. They are reported, never
# hidden, and tests/test_django_suite.py expects them to go on failing (xfail strict),
# so a fix in djpool shows up as an entry to delete here. docs/compatibility.md has
# each one's root cause, reproduction and proposed fix.
class Known(NamedTuple):
    reason: str
    # the Django series where it was seen failing with the shim
    django: tuple[str, ...] = ("4.2", "5.2", "6.1")


CONN_MAX_AGE_IS_ZERO = Known(
    "by design: pooled aliases behave as CONN_MAX_AGE=0 (README), so with CONN_MAX_AGE=None "
    "close_if_unusable_or_obsolete() gives the connection back to the pool and "
    "connection.connection is no longer the same object"
)
SESSION_TIME_ZONE = Known(
    "by design: djpool sends Django's time zone in the startup packet (options=-c TimeZone=...) "
    "so that DISCARD ALL keeps it; RESET TIMEZONE then gives Django's zone, not the server's, "
    "and Django finds no time zone to set on the connection"
)
KNOWN: dict[str, Known] = {
    **{
        f"backends.base.test_base.ConnectionHealthChecksTests.{name}": CONN_MAX_AGE_IS_ZERO
        for name in (
            "test_health_checks_enabled",
            "test_health_checks_enabled_errors_occurred",
            "test_health_checks_disabled",
            "test_set_autocommit_health_checks_enabled",
        )
    },
    "backends.postgresql.tests.Tests.test_bypass_timezone_configuration": SESSION_TIME_ZONE,
}


# Tests that hold more than two connections of one alias at once (Django's
# per-thread connections, or a second connection opened to block the first), so
# that with POOL_SIZE=2 (and POOL_MAX_OVERFLOW=0) one of them waits POOL_TIMEOUT
# and gets djpool's "is exhausted" error: test id -> connections held at once.
# That is the pool doing its job; the test needs a bigger pool.
POOL_EXHAUSTION: dict[str, int] = {
    "backends.tests.ThreadTests.test_default_connection_thread_local": 3,
    "select_for_update.tests.SelectForUpdateTests.test_block": 3,
    "select_for_update.tests.SelectForUpdateTests.test_skip_locked_skips_locked_rows": 3,
}
_EXHAUSTED = "is exhausted: all "


def django_series(stack: str) -> str:
    """ "dj52-psycopg3" -> "5.2", "py314-dj61-psycopg3" -> "6.1"."""
    match = re.search(r"(?:^|-)dj(\d)(\d+)-", stack)
    if not match:
        raise ValueError(f"not a stack name: {stack!r}")
    return f"{match[1]}.{match[2]}"


def known(stack: str, problem: str) -> Known | None:
    """The KNOWN entry explaining ``problem`` on ``stack``, if any."""
    entry = KNOWN.get(rerun_target(problem))
    return entry if entry is not None and django_series(stack) in entry.django else None


# unittest's report of one problem: "FAIL: test_x (pkg.mod.Class.test_x)" and the like.
_PROBLEM = re.compile(r"^(FAIL|ERROR|UNEXPECTED SUCCESS): (.+)$", re.MULTILINE)
_RAN = re.compile(r"^Ran (\d+) tests? in ", re.MULTILINE)
_SUMMARY = re.compile(r"^(OK|FAILED)(?: \((.*)\))?\s*$", re.MULTILINE)
_SHIM_LINE = re.compile(r"^djpool: pooling ", re.MULTILINE)
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclass
class Run:
    """One runtests.py invocation: a label (or test ids) on a stack, with or without the shim."""

    stack: str
    label: str
    shim: bool
    ran: int | None = None  # None: runtests ended without unittest's "Ran N tests"
    problems: list[str] = field(default_factory=list)  # "FAIL: test (id)", ...
    summary: dict[str, int] = field(default_factory=dict)  # failures, errors, skipped, ...
    returncode: int | None = None
    seconds: float = 0.0
    connections_opened: int = 0
    timed_out: bool = False
    log: str = ""

    @property
    def crashed(self) -> bool:
        return self.ran is None

    def failed_ids(self) -> set[str]:
        """What went wrong, one entry per problem; a crash is one entry of its own."""
        found = set(self.problems)
        if self.crashed:
            found.add(
                "TIMEOUT: runtests.py"
                if self.timed_out
                else f"CRASH: runtests.py exited with status {self.returncode} before "
                "reporting (see the log)"
            )
        return found


@dataclass
class LabelResult:
    """A label on a stack: both runs, and what only the shim's run got wrong."""

    stack: str
    label: str
    with_shim: Run
    without_shim: Run
    shim_only: list[str] = field(default_factory=list)  # djpool's: not KNOWN, seen twice
    known: list[str] = field(default_factory=list)  # only with the shim, and in KNOWN
    flaky: list[str] = field(default_factory=list)  # only with the shim once, not twice
    exhausted: list[str] = field(default_factory=list)  # POOL_EXHAUSTION, pool too small
    second_runs: list[Run] = field(default_factory=list)  # the confirming run, both ways

    @property
    def both(self) -> list[str]:
        return sorted(self.with_shim.failed_ids() & self.without_shim.failed_ids())


# -- Django's test suite: the sdist of the installed version -----------------


def suite_venv(stack: str) -> str:
    return f"djsuite-{stack}"


def django_version(stack: str) -> str:
    result = stacks.check(
        stacks.run_python(
            suite_venv(stack), "import django; print(django.__version__)", shim=False
        ),
        f"python of {suite_venv(stack)}",
    )
    return result.stdout.strip()


def django_tests_dir(version: str, cache: Path = SOURCE_CACHE) -> Path:
    """Django's tests/ for ``version``, from its sdist on PyPI, downloaded once."""
    target = cache / version / "tests"
    if (target / "runtests.py").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as scratch:
        # pip, not the venv's: the test venvs are made by uv and have none.
        pip = [shutil.which("python3") or sys.executable, "-m", "pip"]
        # --ignore-requires-python: Django 6 wants Python >= 3.12; only its files are used.
        command = [
            *pip,
            "download",
            "--quiet",
            "--no-binary",
            ":all:",
            "--no-deps",
            "--ignore-requires-python",
            "--dest",
            scratch,
            f"django=={version}",
        ]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
        sdists = list(Path(scratch).glob("[Dd]jango-*.tar.gz"))
        if not sdists:
            raise RuntimeError(
                f"could not download Django {version}'s sdist: "
                f"{' '.join(command)}\n{result.stdout}{result.stderr}"
            )
        with tarfile.open(sdists[0]) as archive:
            members = [m for m in archive.getmembers() if m.name.split("/")[1:2] == ["tests"]]
            archive.extractall(scratch, members=members, filter="data")
        top = sdists[0].name.removesuffix(".tar.gz")
        (cache / version).mkdir(exist_ok=True)
        try:
            os.rename(Path(scratch, top, "tests"), target)
        except OSError:  # another run got there first
            if not (target / "runtests.py").exists():
                raise
    return target


# -- the database ------------------------------------------------------------


def prepare_server(server: PostgresServer) -> None:
    """The suite's superuser role and its two databases (NAME of "default" and "other")."""
    try:
        server.password_of(SUITE_ROLE)
    except KeyError:
        server.create_role(SUITE_ROLE, secrets.token_urlsafe(18), superuser=True)
    for name in (DEFAULT_DATABASE, OTHER_DATABASE):
        if not server.query("SELECT 1 FROM pg_database WHERE datname = %s", [name]):
            server.create_database(name, owner=SUITE_ROLE)


def database_urls(server: PostgresServer, application_name: str) -> dict[str, str]:
    tls = {
        "sslmode": "verify-full",
        "sslrootcert": str(server.ca_cert_path),
        "application_name": application_name,
    }
    return {
        "DATABASE_URL": server.url(DEFAULT_DATABASE, SUITE_ROLE, **tls),
        "OTHER_DATABASE_URL": server.url(OTHER_DATABASE, SUITE_ROLE, **tls),
    }


# -- one run ---------------------------------------------------------------


def parse_output(text: str) -> tuple[int | None, list[str], dict[str, int]]:
    """(tests run, problems, summary counts) from unittest's closing report."""
    ran_matches = _RAN.findall(text)
    ran = int(ran_matches[-1]) if ran_matches else None
    # the same failure must read the same in every run: no object addresses
    problems = sorted(
        {_ADDRESS.sub("", match.group(0).strip()) for match in _PROBLEM.finditer(text)}
    )
    summary: dict[str, int] = {}
    summaries = _SUMMARY.findall(text)
    if summaries and summaries[-1][1]:
        for part in summaries[-1][1].split(","):
            name, _, number = part.strip().partition("=")
            if number.isdigit():
                summary[name.strip()] = int(number)
    return ran, problems, summary


def excerpt(run: Run, problem: str, limit: int = 60) -> str:
    """unittest's traceback for ``problem`` in ``run``'s log (or the log's tail for a crash)."""
    text = Path(run.log).read_text(errors="replace")
    start = text.find(f"\n{problem}\n") if problem else -1
    if start < 0:
        lines = text.splitlines()[-limit:]
    else:
        block = text[start + 1 :]
        end = re.search(r"^(=+|-+\nRan \d+ tests?)$", block[len(problem) + 1 :], re.MULTILINE)
        lines = block[: len(problem) + 1 + end.start()].splitlines() if end else block.splitlines()
    return "\n".join(lines[:limit]) + f"\n(log: {run.log})"


def rerun_target(problem: str) -> str:
    """The dotted name runtests.py accepts, from a problem line.

    "FAIL: test_x (pkg.mod.Class.test_x) [sub]" -> "pkg.mod.Class.test_x";
    "ERROR: setUpClass (pkg.mod.Class)" -> "pkg.mod.Class";
    "ERROR: pkg.mod (unittest.loader._FailedTest.pkg.mod)" -> "pkg.mod".
    """
    text = problem.split(": ", 1)[1]
    match = re.match(r"(\S+) \(([^)]+)\)", text)
    if not match:
        return text.split()[0]
    name, dotted = match.groups()
    if dotted.startswith("unittest.loader._FailedTest."):
        return name
    return dotted


def run_runtests(
    stack: str,
    label: str,
    targets: Sequence[str],
    *,
    shim: bool,
    server: PostgresServer,
    tests_dir: Path,
    parallel: int,
    log_dir: Path,
    timeout: float = RUN_TIMEOUT,
    attempt: int = 1,
    shim_dir: Path = stacks.SHIM_DIR,
    pool_size: int | None = None,
) -> Run:
    """runtests.py with ``targets`` (labels or test ids) once, its log kept in ``log_dir``.

    shim_dir: the shim directory put first on PYTHONPATH when ``shim`` (default: this
        checkout's), e.g. another checkout's to try a fix in djpool against the suite.
    pool_size: POOL_SIZE for the run (default: djpool's default).
    """
    mode = ("shim" if shim else "noshim") + (f".{attempt}" if attempt > 1 else "")
    application_name = f"djsuite.{stack}.{label}.{mode}"[:63]
    env = {**database_urls(server, application_name), "DJANGO_COLORS": "nocolor"}
    if pool_size is not None:
        env["POOL_SIZE"] = str(pool_size)
    log_path = log_dir / stack / f"{label}.{mode}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(stacks.python_path(suite_venv(stack))),
        "-X",
        "faulthandler",
        "runtests.py",
        "--settings",
        SETTINGS_MODULE,
        "--noinput",
        "--verbosity",
        "2",
        "--parallel",
        str(parallel),
        *targets,
    ]
    opened_before = server.connections_opened(application_name=application_name)
    started = time.monotonic()
    timed_out = False
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(command)}\n# shim: {shim_dir if shim else 'off'}\n")
        log.flush()
        process = subprocess.Popen(
            command,
            cwd=tests_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=stacks.stack_env(
                env, shim=False, pythonpath=[*([shim_dir] if shim else []), SETTINGS_DIR]
            ),
        )
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)
            returncode = process.wait(timeout=60)
    seconds = time.monotonic() - started
    text = log_path.read_text(errors="replace")
    ran, problems, summary = parse_output(text)
    if shim and ran is not None and not _SHIM_LINE.search(text):
        raise RuntimeError(f"the shim did not load in {log_path}: no 'djpool: pooling' line")
    if timed_out:
        ran = None
    return Run(
        stack=stack,
        label=label,
        shim=shim,
        ran=ran,
        problems=problems,
        summary=summary,
        returncode=returncode,
        seconds=round(seconds, 1),
        connections_opened=server.connections_opened(application_name=application_name)
        - opened_before,
        timed_out=timed_out,
        log=str(log_path),
    )


def exhaustion_suspects(run: Run, problems: Iterable[str], pool_size: int | None) -> list[str]:
    """The ``problems`` that may be a too small pool: POOL_EXHAUSTION tests needing more
    than ``pool_size``, in a run whose output shows djpool's exhaustion error (in the
    test's traceback, or printed by a thread of the test that died of it)."""
    if pool_size is None:
        return []
    suspects = [p for p in problems if POOL_EXHAUSTION.get(rerun_target(p), 0) > pool_size]
    if not suspects or _EXHAUSTED not in Path(run.log).read_text(errors="replace"):
        return []
    return suspects


def run_label(
    stack: str,
    label: str,
    *,
    server: PostgresServer,
    tests_dir: Path,
    parallel: int = 1,
    log_dir: Path = LOG_DIR,
    timeout: float = RUN_TIMEOUT,
    shim_dir: Path = stacks.SHIM_DIR,
    pool_size: int | None = None,
    echo=print,
) -> LabelResult:
    """One label both ways; run again both ways if something unexplained failed with the shim."""
    options = dict(
        server=server,
        tests_dir=tests_dir,
        parallel=parallel,
        log_dir=log_dir,
        timeout=timeout,
        shim_dir=shim_dir,
        pool_size=pool_size,
    )
    with_shim = run_runtests(stack, label, [label], shim=True, **options)
    echo(f"       {stack} {label} with shim: {_brief(with_shim)}")
    without_shim = run_runtests(stack, label, [label], shim=False, **options)
    echo(f"       {stack} {label} without shim: {_brief(without_shim)}")
    result = LabelResult(stack, label, with_shim, without_shim)
    suspects = sorted(with_shim.failed_ids() - without_shim.failed_ids())
    result.known = [p for p in suspects if known(stack, p)]
    small_pool = exhaustion_suspects(
        with_shim, [p for p in suspects if not known(stack, p)], pool_size
    )
    if small_pool:
        # Confirm: alone, with a pool as big as they need, they pass with the shim.
        targets = sorted({rerun_target(p) for p in small_pool})
        big = max(POOL_EXHAUSTION[target] for target in targets)
        check = run_runtests(
            stack, label, targets, shim=True, attempt=3, **{**options, "pool_size": big}
        )
        echo(
            f"       {stack} {label} {len(targets)} tests alone with POOL_SIZE={big}: "
            f"{_brief(check)}"
        )
        still = {rerun_target(p) for p in check.failed_ids()}
        if not check.crashed:
            result.exhausted = [p for p in small_pool if rerun_target(p) not in still]
        result.second_runs.append(check)
    unexplained = [p for p in suspects if not known(stack, p) and p not in result.exhausted]
    if not unexplained:
        return result
    again = run_runtests(stack, label, [label], shim=True, attempt=2, **options)
    control = run_runtests(stack, label, [label], shim=False, attempt=2, **options)
    result.second_runs += [again, control]
    for problem in unexplained:
        if problem in again.failed_ids() and problem not in control.failed_ids():
            result.shim_only.append(problem)
        else:
            result.flaky.append(problem)
    echo(
        f"       {stack} {label} second run: {len(result.shim_only)} failures only with "
        f"the shim both times, {len(result.flaky)} not repeated"
    )
    return result


def _brief(run: Run) -> str:
    if run.crashed:
        return f"{'timed out' if run.timed_out else 'crashed'} after {run.seconds:.0f}s"
    return (
        f"{run.ran} tests, {len(run.problems)} failures/errors, "
        f"{run.summary.get('skipped', 0)} skipped, {run.seconds:.0f}s, "
        f"{run.connections_opened} connections opened"
    )


def run_suite(
    server: PostgresServer,
    stack_names: Iterable[str],
    labels: Iterable[str],
    *,
    parallel: int = 1,
    log_dir: Path = LOG_DIR,
    timeout: float = RUN_TIMEOUT,
    shim_dir: Path = stacks.SHIM_DIR,
    pool_size: int | None = None,
    echo=print,
) -> list[LabelResult]:
    prepare_server(server)
    echo(
        f"-----> runs with the shim load {shim_dir}"
        + (f", POOL_SIZE={pool_size}" if pool_size is not None else "")
        + f", --parallel {parallel}"
    )
    results = []
    for stack in stack_names:
        version = django_version(stack)
        tests_dir = django_tests_dir(version)
        echo(f"-----> {stack}: Django {version}, tests from {tests_dir}")
        for label in labels:
            results.append(
                run_label(
                    stack,
                    label,
                    server=server,
                    tests_dir=tests_dir,
                    parallel=parallel,
                    log_dir=log_dir,
                    timeout=timeout,
                    shim_dir=shim_dir,
                    pool_size=pool_size,
                    echo=echo,
                )
            )
    return results


# -- report ----------------------------------------------------------------


COLUMNS = (  # heading, width, value of a LabelResult
    ("stack", -19, lambda r: r.stack),
    ("label", -18, lambda r: r.label),
    ("tests", 6, lambda r: "crash" if r.with_shim.crashed else r.with_shim.ran),
    ("skipped", 7, lambda r: r.with_shim.summary.get("skipped", 0)),
    ("fail+shim", 9, lambda r: len(r.with_shim.failed_ids())),
    ("fail-shim", 9, lambda r: len(r.without_shim.failed_ids())),
    ("shim-only", 9, lambda r: len(r.shim_only)),
    ("known", 5, lambda r: len(r.known)),
    ("flaky", 5, lambda r: len(r.flaky)),
    ("exhausted", 9, lambda r: len(r.exhausted)),
    ("logins+shim", 11, lambda r: r.with_shim.connections_opened),
    ("logins-shim", 11, lambda r: r.without_shim.connections_opened),
    ("s+shim", 6, lambda r: f"{r.with_shim.seconds:.0f}"),
    ("s-shim", 6, lambda r: f"{r.without_shim.seconds:.0f}"),
)


def table(results: Sequence[LabelResult]) -> list[str]:
    """One line per stack and label; a negative width aligns left."""

    def row(values: Iterable[object]) -> str:
        return " ".join(
            f"{value!s:{'<' if width < 0 else '>'}{abs(width)}}"
            for value, (_, width, _) in zip(values, COLUMNS, strict=True)
        )

    heading = row(name for name, _, _ in COLUMNS)
    return [
        heading,
        "-" * len(heading),
        *(row(value(r) for _, _, value in COLUMNS) for r in results),
    ]


def report(results: Sequence[LabelResult]) -> str:
    """The table, then every failing test id by kind, then the verdict."""
    lines = table(results)
    for r in results:
        sections = (
            ("only with the shim, both runs (djpool's)", r.shim_only),
            (
                "only with the shim, known",
                [f"{p}\n      {KNOWN[rerun_target(p)].reason}" for p in r.known],
            ),
            ("only with the shim in one run, not the other (flaky)", r.flaky),
            (
                "only with the shim, pool exhausted: the pool is smaller than the test needs",
                r.exhausted,
            ),
            ("with and without the shim (not djpool's)", r.both),
            (
                "only without the shim",
                sorted(r.without_shim.failed_ids() - r.with_shim.failed_ids()),
            ),
        )
        for title, problems in sections:
            if problems:
                lines.append(f"\n{r.stack} {r.label}: {title}:")
                lines.extend(f"  {problem}" for problem in problems)
    shim_only = sum(len(r.shim_only) for r in results)
    known = sum(len(r.known) for r in results)
    flaky = sum(len(r.flaky) for r in results)
    exhausted = sum(len(r.exhausted) for r in results)
    lines.append(
        f"\n{shim_only} failures only with the shim, {known} known, {flaky} flaky, "
        f"{exhausted} pool exhaustion"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--stacks",
        nargs="+",
        default=list(stacks.STACKS),
        choices=SUITE_STACKS,
        metavar="STACK",
        help=f"default: {' '.join(stacks.STACKS)}; also "
        f"{' '.join(SUITE_STACKS[len(stacks.STACKS) :])} "
        "(bash tests/setup_chroots.sh)",
    )
    parser.add_argument(
        "--labels",
        nargs="+",
        default=list(LABELS),
        metavar="LABEL",
        help=f"runtests.py labels (default: {' '.join(LABELS)})",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="runtests.py --parallel (default 1: the machine is shared)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=RUN_TIMEOUT,
        help="seconds for one runtests.py run (default %(default)s)",
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=LOG_DIR,
        help="where every run's output goes (default %(default)s)",
    )
    parser.add_argument(
        "--shim",
        type=Path,
        default=stacks.SHIM_DIR,
        metavar="DIR",
        help="the shim directory for the runs with the shim (default: this "
        "checkout's); another checkout's shim/ tries a fix in djpool",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        metavar="N",
        help="POOL_SIZE for the runs (default: djpool's); tests in "
        "POOL_EXHAUSTION that then exhaust the pool are reported apart",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with PostgresServer(max_connections=200) as server:
        results = run_suite(
            server,
            args.stacks,
            args.labels,
            parallel=args.parallel,
            log_dir=args.log_dir,
            timeout=args.timeout,
            shim_dir=args.shim.resolve(),
            pool_size=args.pool_size,
        )
    print()
    print(report(results))
    print(f"full output of every run in {args.log_dir}; took {time.monotonic() - started:.0f}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 1 if any(r.shim_only for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
