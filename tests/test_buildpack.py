"""The buildpack, through a local emulator of Heroku's build and dyno boot.

The sample app (tests/app, with tests/buildpack_apps/base: no SQLAlchemy of its
own, ``web: gunicorn testproj.wsgi --worker-class gthread --threads 4
--preload`` and ``release: python manage.py migrate``) is built once for the
module by the heroku/python stand-in and this buildpack
(tests/support/heroku.py), and its dynos are booted the way Heroku boots them:
HOME=/app stand-in, ``.profile.d/*.sh`` sourced, the Procfile command exec'd.
Every assertion is about what the real PostgreSQL (the suite's ``pg``) and
real HTTP show.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from support import stacks
from support.concurrency import in_threads
from support.heroku import REPO, HerokuApp, PythonBuildpack
from support.logs import djpool_lines
from support.procs import free_port, tcp_port_owner
from support.waiting import wait_until
from support.workers import (
    OWN_SQLALCHEMY_PROBE,
    every_worker_pools,
    first_query_in_every_worker,
    gunicorn_workers,
    peak_connections_under_load,
)

APP_SOURCE = REPO / "tests" / "app"
APPS = REPO / "tests" / "buildpack_apps"
BUILDPACK_BIN = REPO / "bin"

WORKERS = 2
POOL_SIZE = 2
POOL_MAX_OVERFLOW = 1
BASE_CONFIG = {
    "WEB_CONCURRENCY": str(WORKERS),
    "POOL_SIZE": str(POOL_SIZE),
    "POOL_MAX_OVERFLOW": str(POOL_MAX_OVERFLOW),
}
DJPOOL_LINE = "djpool: pooling"

# Builds take longer than the suite's default per-test timeout.
pytestmark = pytest.mark.timeout(600)


def sources(*variants: str) -> list[Path]:
    return [APP_SOURCE, APPS / "base", *(APPS / name for name in variants)]


def dead_index_env() -> dict[str, str]:
    """pip settings under which any download fails at once: the only index is a closed port."""
    return {
        "PIP_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_FIND_LINKS": "",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "5",
    }


def shell_python(code: str) -> str:
    """A one-off dyno command running ``code`` in the app's Django shell."""
    return shlex.join(["python", "manage.py", "shell", "-c", code])


def last_line(text: str) -> str:
    """What the code printed last (Django 5.2's shell first says what it imported)."""
    return text.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def heroku_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("heroku")


@pytest.fixture(scope="module")
def base_app(heroku_dir: Path, pg) -> HerokuApp:
    """The sample app, built once with the buildpack and released (migrations run)."""
    app = HerokuApp(sources(), heroku_dir / "base", BASE_CONFIG)
    build = app.build()
    assert build.ok, build.log
    release = app.release(
        env={"DATABASE_URL": pg.url(sslmode="require", application_name="buildpack-release")}
    )
    app.release_result = release  # type: ignore[attr-defined]
    return app


@pytest.fixture
def dynos():
    """Start dynos with ``dynos(app, "web", env)``; all are stopped after the test."""
    started = []

    def start(app: HerokuApp, process_type: str = "web", env=None):
        dyno = app.start(process_type, env=env)
        started.append(dyno)
        return dyno

    yield start
    for dyno in reversed(started):
        dyno.stop()


# -- detect and release --------------------------------------------------------------


@pytest.mark.parametrize(
    "marker", ["requirements.txt", "pyproject.toml", "Pipfile", ".heroku/python"]
)
def test_detect_passes_for_a_python_app(tmp_path: Path, marker: str) -> None:
    path = tmp_path / marker
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir() if marker.startswith(".heroku") else path.write_text("")
    done = subprocess.run([BUILDPACK_BIN / "detect", tmp_path], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "djpool\n")


def test_detect_fails_for_anything_else(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text("{}")
    done = subprocess.run([BUILDPACK_BIN / "detect", tmp_path], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stdout == ""
    assert " !     Error: djpool found no Python app" in done.stderr


def test_release_prints_valid_yaml(base_app: HerokuApp) -> None:
    assert yaml.safe_load(base_app.builds[-1].release_yaml) == {}


def test_app_json_describes_a_deployable_pooled_app() -> None:
    manifest = json.loads((REPO / "app.json").read_text())
    buildpacks = [entry["url"] for entry in manifest["buildpacks"]]
    assert buildpacks[0] == "heroku/python" and len(buildpacks) == 2
    assert buildpacks[1].startswith("https://")
    assert {"plan": "heroku-postgresql", "as": "DATABASE"} in manifest["addons"]
    assert manifest["env"]["POOL_SIZE"]["description"]
    assert manifest["env"]["POOL_SIZE"]["value"] == "5"
    test = manifest["environments"]["test"]
    assert any(addon.startswith("heroku-postgresql") for addon in test["addons"])
    assert test["scripts"]["test"]


# -- the build ------------------------------------------------------------------------


def test_build_installs_djpool_and_private_sqlalchemy(base_app: HerokuApp) -> None:
    build = base_app.builds[-1]
    assert "-----> djpool app detected" in build.stdout
    assert "       SQLAlchemy 2.1.9: djpool's private copy" in build.stdout
    assert "       dj-database-url 3.1.2: the app's own copy" in build.stdout
    slug = base_app.runtime_dir
    assert (slug / ".djpool" / "shim" / "sitecustomize.py").is_file()
    assert (slug / ".djpool" / "lib" / "djpool" / "startup.py").is_file()
    assert (slug / ".djpool" / "vendor" / "sqlalchemy").is_dir()
    assert not (slug / ".djpool" / "vendor" / "dj_database_url.py").exists()
    # The app's own environment got nothing: SQLAlchemy is only in the private dir.
    assert not list((slug / ".heroku" / "python").glob("lib/python*/site-packages/sqlalchemy"))
    assert build.stderr == ""


def test_python_is_installed_as_heroku_python_installs_it(base_app: HerokuApp) -> None:
    """A real Python (no virtualenv) in .heroku/python, with PYTHONHOME set at runtime."""
    python_home = base_app.runtime_dir / ".heroku" / "python"
    assert not (python_home / "pyvenv.cfg").exists()
    assert list((python_home / "lib").glob("libpython3*.so*"))
    code = "import os, sys; print(sys.prefix, sys.executable, os.environ['PYTHONHOME'])"
    done = base_app.run(f"python -c {shlex.quote(code)}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        str(python_home),
        str(python_home / "bin" / "python"),
        str(python_home),
    ]


def test_slug_names_no_build_dir(base_app: HerokuApp) -> None:
    build_dir = str(base_app.builds[-1].build_dir)
    assert build_dir != str(base_app.runtime_dir)
    found = subprocess.run(
        ["grep", "-rlF", build_dir, str(base_app.runtime_dir)], capture_output=True, text=True
    )
    assert found.returncode == 1, f"files naming {build_dir}:\n{found.stdout}"
    # Bytecode writing was on during the build (Heroku does not turn it off),
    # and every module of .djpool has bytecode that records its runtime path.
    djpool_root = base_app.runtime_dir / ".djpool"
    for package in (djpool_root / "lib" / "djpool", djpool_root / "vendor" / "sqlalchemy"):
        sources = sorted(package.glob("*.py"))
        assert sources, package
        for source in sources:
            pycs = list((package / "__pycache__").glob(f"{source.stem}.*.pyc"))
            assert len(pycs) == 1, source
            assert str(source).encode() in pycs[0].read_bytes(), pycs[0]


def test_invalid_pool_size_fails_the_build(heroku_dir: Path) -> None:
    app = HerokuApp(sources(), heroku_dir / "bad-pool-size", {"POOL_SIZE": "abc"})
    build = app.build()
    assert not build.ok
    assert " !     Error: a djpool config var is not valid." in build.stderr
    assert (
        " !     POOL_SIZE='abc' is not valid: expected a whole number from 1 to 1000"
        in build.stderr
    )
    assert "POOL_SIZE" not in build.stdout.split("Checking the POOL_* config vars")[1]
    assert not (app.runtime_dir / ".djpool").exists()


def test_pool_disabled_at_build_time_installs_but_does_not_pool(
    base_app: HerokuApp, heroku_dir: Path, database_url: str
) -> None:
    app = HerokuApp(
        sources(), heroku_dir / "disabled", {"POOL_DISABLED": "true"}, cache_dir=base_app.cache_dir
    )
    build = app.build()
    assert build.ok, build.log
    assert "djpool is installed; POOL_DISABLED is set, so the app runs unpooled" in build.stdout
    assert (app.runtime_dir / ".djpool" / "shim" / "sitecustomize.py").is_file()
    code = (
        "from django.db import connection\n"
        "with connection.cursor() as c: c.execute('SELECT 1')\n"
        "import sys; print('djpool' in sys.modules)"
    )
    done = app.run(shell_python(code), env={"DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    assert last_line(done.stdout) == "False"
    assert djpool_lines(done.stderr) == []


def test_missing_python_fails_the_build(heroku_dir: Path) -> None:
    app = HerokuApp(sources(), heroku_dir / "no-python", python_buildpack=None)
    build = app.build()
    assert not build.ok
    assert " !     Error: Python is not installed in this build." in build.stderr
    assert "heroku buildpacks:add heroku/python" in build.stderr
    assert "Internal error" not in build.stderr


def test_recompile_with_a_warm_cache_downloads_nothing(
    base_app: HerokuApp, heroku_dir: Path, pg
) -> None:
    """A second app on the first one's build cache, built with every index unreachable."""
    wheels = base_app.cache_dir / "djpool" / "wheels"
    before = {path.name: path.stat().st_mtime_ns for path in wheels.iterdir()}
    app = HerokuApp(sources(), heroku_dir / "warm", BASE_CONFIG, cache_dir=base_app.cache_dir)
    # bin/compile twice on the same build dir: the second run must redo the same.
    build = app.build(compile_env=dead_index_env(), compile_runs=2)
    assert build.ok, build.log
    assert build.stdout.count("Installed from the build cache, nothing downloaded") == 2
    assert "Downloading" not in build.stdout
    assert {path.name: path.stat().st_mtime_ns for path in wheels.iterdir()} == before
    done = app.run(
        'python -c \'import os, sqlalchemy; print(os.environ["PYTHONPATH"]); '
        "print(sqlalchemy.__version__)'",
        env={"DATABASE_URL": pg.url(sslmode="require")},
    )
    assert done.returncode == 0, done.stderr
    runtime = app.runtime_dir
    assert done.stdout.split() == [f"{runtime}/.djpool/shim:{runtime}", "2.1.9"]


def test_heroku_ci_build_in_the_app_dir_itself(
    base_app: HerokuApp, heroku_dir: Path, database_url: str
) -> None:
    """Heroku CI builds in /app, so there the build dir is the runtime dir."""
    app = HerokuApp(sources(), heroku_dir / "ci", BASE_CONFIG, cache_dir=base_app.cache_dir)
    build = app.build(in_place=True)
    assert build.ok, build.log
    assert build.build_dir == app.runtime_dir
    code = (
        "from django.db import connection\n"
        "with connection.cursor() as c: c.execute('SELECT 1')\n"
        "from djpool import startup\n"
        "print('patched', startup.registry() is not None)"
    )
    done = app.run(shell_python(code), env={"DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    assert last_line(done.stdout) == "patched True"


# What heroku/python's export file (builds) and python.sh (dynos) both set.
PYTHON_BUILDPACK_ENV = {
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PYTHONUNBUFFERED",
    "PYTHONHOME",
    "LIBRARY_PATH",
    "LD_LIBRARY_PATH",
    "LANG",
    "PYTHONPATH",
}
# What Heroku gives a buildpack (STACK, HOME, PATH), what heroku/python's export
# file sets, and what bash itself sets. Nothing else may reach a build.
BUILD_ENV = {"STACK", "HOME", "PATH"} | PYTHON_BUILDPACK_ENV
# A dyno: Heroku's dyno variables, the config vars, then .profile.d (heroku/python's
# python.sh and python.gunicorn.sh, djpool's djpool.sh).
DYNO_ENV = (
    {"HOME", "PATH", "DYNO", "PORT"}
    | PYTHON_BUILDPACK_ENV
    | {
        "FORWARDED_ALLOW_IPS",
        "GUNICORN_CMD_ARGS",
        "DJPOOL_PYTHON_PREFIX",
    }
)
BASH_OWN = {"PWD", "OLDPWD", "SHLVL", "_"}
RUNNER_ONLY = {
    "PYTHONDONTWRITEBYTECODE": "1",
    "PIP_INDEX_URL": "http://leak.invalid/simple",
    "PIP_FIND_LINKS": "/leak",
    "VIRTUAL_ENV": "/leak",
    "PYTHONPATH": "/leak",
    "PYTHONHOME": "/leak",
    "PYTHONSTARTUP": "/leak",
    "http_proxy": "http://leak.invalid:9",
    "HTTPS_PROXY": "http://leak.invalid:9",
    "DJPOOL_LEAK_CANARY": "leak",
}


def env_names(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_nothing_of_the_runners_environment_reaches_a_build_or_a_dyno(
    base_app: HerokuApp, heroku_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner exports what these machines export (and proxies): builds and dynos see none."""
    for name, value in RUNNER_ONLY.items():
        monkeypatch.setenv(name, value)
    app = HerokuApp(
        sources(),
        heroku_dir / "clean-env",
        {"POOL_SIZE": "3"},
        cache_dir=base_app.cache_dir,
        buildpacks_after=[REPO / "tests" / "buildpacks" / "envdump"],
    )
    build = app.build()
    assert build.ok, build.log
    build_env = env_names((app.runtime_dir / ".build-env").read_text())
    assert set(build_env) - BASH_OWN == BUILD_ENV
    runtime = str(app.runtime_dir)
    assert build_env["HOME"] == runtime
    assert build_env["PYTHONHOME"] == f"{runtime}/.heroku/python"
    assert build_env["PYTHONPATH"] == runtime
    assert not [value for value in build_env.values() if "leak" in value]

    dyno_env = env_names(app.run("env", env={"DYNO_ONLY": "1"}).stdout)
    assert set(dyno_env) - BASH_OWN == DYNO_ENV | {"POOL_SIZE", "DYNO_ONLY"}
    assert not [value for value in dyno_env.values() if "leak" in value]


def documented_build_log() -> str:
    """The sample build output in docs/buildpack.md: the first block of "What the build does"."""
    text = (REPO / "docs" / "buildpack.md").read_text()
    after = text.split("\n## What the build does\n", 1)[1]
    return after.split("```", 2)[1].strip("\n")


def normalized_build_log(text: str, runtime_dir: Path) -> str:
    """What differs between one machine's build and another's, made the same."""
    text = text.replace(str(runtime_dir), "/app")
    text = re.sub(r"Python \d+\.\d+\.\d+", "Python 3.X.Y", text)
    return re.sub(r"-cp\d+-\S+\.whl", "-cpXY-PLATFORM.whl", text)


def test_the_documented_build_output_is_what_a_build_prints(heroku_dir: Path) -> None:
    """docs/buildpack.md shows a first build of an app without SQLAlchemy, POOL_SIZE=5."""
    app = HerokuApp(sources(), heroku_dir / "documented", {"POOL_SIZE": "5"})
    build = app.build()
    assert build.ok, build.log
    ours = build.stdout[build.stdout.index("-----> djpool: checking") :].strip("\n")
    assert normalized_build_log(ours, app.runtime_dir) == normalized_build_log(
        documented_build_log(), Path("/app")
    )


def test_python_without_pip_uses_the_pip_bundled_in_the_standard_library(
    base_app: HerokuApp, heroku_dir: Path, database_url: str
) -> None:
    """heroku/python installs no pip for uv and Poetry apps: ensurepip's wheel does the job."""
    app = HerokuApp(
        sources(),
        heroku_dir / "no-pip",
        BASE_CONFIG,
        cache_dir=base_app.cache_dir,
        python_buildpack=PythonBuildpack(with_pip=False),
    )
    build = app.build()
    assert build.ok, build.log
    assert "No module named pip" in app.run("python -m pip --version").stderr
    assert "       SQLAlchemy 2.1.9: djpool's private copy" in build.stdout
    done = app.run(
        "python -c 'import sqlalchemy; print(sqlalchemy.__file__)'",
        env={"DATABASE_URL": database_url},
    )
    assert done.stdout.strip() == f"{app.runtime_dir}/.djpool/vendor/sqlalchemy/__init__.py"


def test_cold_cache_with_no_index_reachable_fails_clearly(heroku_dir: Path) -> None:
    """The control for the test above: the same settings do stop a build that must download."""
    app = HerokuApp(sources(), heroku_dir / "cold")
    build = app.build(compile_env=dead_index_env())
    assert not build.ok
    assert " !     Error: could not download djpool's dependencies." in build.stderr


# -- dynos ----------------------------------------------------------------------------


def test_release_phase_runs_with_djpool(base_app: HerokuApp) -> None:
    release = base_app.release_result
    assert release.returncode == 0, release.stderr
    assert len(djpool_lines(release.stderr)) == 1
    assert djpool_lines(release.stderr)[0].startswith(DJPOOL_LINE)
    assert "password" not in release.stderr.lower()


def test_one_off_shell_runs_with_the_patch(base_app: HerokuApp, database_url: str) -> None:
    code = (
        "from django.db import connection\n"
        "with connection.cursor() as c: c.execute('SELECT 1')\n"
        "from djpool import startup\n"
        "print('patched', startup.registry() is not None)"
    )
    done = base_app.run(shell_python(code), env={"DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    assert last_line(done.stdout) == "patched True"
    assert djpool_lines(done.stderr)[0].startswith(DJPOOL_LINE)


def test_every_web_worker_pools(
    base_app: HerokuApp, dynos, pg, appname: str, database_url: str
) -> None:
    # No overflow here: every connection a worker opens stays open in its pool,
    # so /proc can still say which worker holds it after the request.
    web = dynos(base_app, "web", {"DATABASE_URL": database_url, "POOL_MAX_OVERFLOW": "0"})
    # Which worker used which server backend (support.workers says how it knows).
    backends_of, requests = every_worker_pools(web, WORKERS, POOL_SIZE)
    assert len(djpool_lines(web.log_text())) == 1  # --preload: the master loads djpool once
    workers = sorted(backends_of)

    # Between requests the pooled connections stay open (idle) in pg_stat_activity.
    idle = {b.pid for b in pg.backends(application_name=appname)}
    everything = set().union(*backends_of.values())
    assert idle and idle <= everything
    assert pg.connections_opened(application_name=appname) == len(everything) < requests
    # ... and later requests are served by those same backends, one worker at a time.
    later = set()
    for _ in range(10):
        status, body = web.post_json(
            "/sql/", {"sql": ["SELECT pg_backend_pid(), inet_client_port()"]}
        )
        assert status == 200, body
        backend_pid, port = body["rows"][0]
        later.add(backend_pid)
        assert backend_pid in backends_of[tcp_port_owner(workers, port)]
    assert later <= everything
    assert pg.connections_opened(application_name=appname) == len(everything)


def test_server_connections_stay_bounded_under_load(
    base_app: HerokuApp, dynos, pg, appname: str, database_url: str
) -> None:
    """16 clients at once against 2 workers x 4 threads, with 2 x 3 pooled connections.

    Without overflow, so that the bound is exact on the server's side too: an
    overflow connection is closed when it comes back, and its server process
    can still be listed in pg_stat_activity for a moment after, next to the
    one that replaces it.
    """
    pool_size = 3
    web = dynos(
        base_app,
        "web",
        {"DATABASE_URL": database_url, "POOL_SIZE": str(pool_size), "POOL_MAX_OVERFLOW": "0"},
    )
    workers = gunicorn_workers(web, WORKERS)
    first_query_in_every_worker(web, workers)
    limit = WORKERS * pool_size
    # 16 clients > 2 workers x 4 threads > 2 x 3 connections
    statuses, peak = peak_connections_under_load(web, pg, appname)
    assert statuses == [200] * 96
    # ... and the load did need more than one connection per worker.
    assert WORKERS < peak <= limit
    # Nothing was closed and reopened: every login of the whole run is one of those.
    assert pg.connections_opened(application_name=appname) <= limit


def test_concurrent_first_queries_build_one_pool_per_worker(
    base_app: HerokuApp, dynos, database_url: str
) -> None:
    """Fresh workers hit by a burst of first requests: still one pool each (/pool/)."""
    for _ in range(4):  # a race: a few fresh dynos
        web = dynos(base_app, "web", {"DATABASE_URL": database_url})
        wait_until(
            lambda web=web: len(web.worker_pids()) == WORKERS,
            timeout=30,
            interval=0.05,
            message=f"{WORKERS} gunicorn workers",
        )
        in_threads(16, lambda _, web=web: web.get("/slow/?ms=50"))
        pools_of = {}
        for _ in range(100):
            status, body = web.get("/pool/")
            assert status == 200, body
            pools_of[body["pid"]] = body["pools"]
            if len(pools_of) == WORKERS:
                break
        for pid, pools in pools_of.items():
            assert len(pools) == 1, (pid, pools)
        web.stop()


def test_pool_disabled_leaves_the_app_unpooled(
    base_app: HerokuApp, dynos, pg, appname: str, database_url: str
) -> None:
    web = dynos(base_app, "web", {"DATABASE_URL": database_url, "POOL_DISABLED": "1"})
    pids = [web.get("/pid/")[1]["pid"] for _ in range(5)]
    assert len(set(pids)) == 5  # a new server connection for every request
    assert pg.connections_opened(application_name=appname) == 5
    assert djpool_lines(web.log_text()) == []
    status, body = web.get("/whoami/")
    assert status == 200 and body["djpool"] is False


def test_pythonpath_keeps_the_apps_own_value(base_app: HerokuApp) -> None:
    runtime = base_app.runtime_dir
    show = "python -c 'import os; print(os.environ[\"PYTHONPATH\"])'"
    assert base_app.run(show).stdout.strip() == f"{runtime}/.djpool/shim:{runtime}"
    own = base_app.run(show, env={"PYTHONPATH": "/srv/extra"})
    assert own.stdout.strip() == f"{runtime}/.djpool/shim:/srv/extra"


@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="no /usr/bin/python3")
def test_the_systems_python_is_left_alone(base_app: HerokuApp, database_url: str) -> None:
    """/usr/bin/python3 in a dyno imports the shim (first on PYTHONPATH), which stays out.

    heroku/python's PYTHONHOME gives it the app's prefix too: only where the
    executable lives tells the two apart.
    """
    code = "import sys; print(sys.prefix); print(*sys.path, sep='\\n')"
    done = base_app.run(
        shlex.join(["/usr/bin/python3", "-c", code]), env={"DATABASE_URL": database_url}
    )
    assert done.returncode == 0, done.stderr
    prefix, *path = done.stdout.splitlines()
    assert prefix == str(base_app.runtime_dir / ".heroku" / "python")
    djpool_root = base_app.runtime_dir / ".djpool"
    assert str(djpool_root / "shim") in path
    assert str(djpool_root / "lib") not in path
    assert done.stderr == ""


# -- apps with their own SQLAlchemy --------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "version"),
    [
        ("sqlalchemy14", "1.4.54"),
        ("sqlalchemy14_psycopg2", "1.4.54"),
        ("sqlalchemy2", "2.0.41"),
    ],
)
def test_the_apps_own_sqlalchemy_is_kept_and_pools(
    heroku_dir: Path, dynos, pg, appname: str, database_url: str, variant: str, version: str
) -> None:
    app = HerokuApp(sources(variant), heroku_dir / variant, {**BASE_CONFIG, "WEB_CONCURRENCY": "1"})
    build = app.build()
    assert build.ok, build.log
    assert f"       SQLAlchemy {version}: the app's own copy" in build.stdout
    assert "privately" not in build.stdout  # nothing to install
    assert not (app.runtime_dir / ".djpool" / "vendor").exists()

    code = OWN_SQLALCHEMY_PROBE
    done = app.run(shell_python(code), env={"DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    expected_sitecustomize = "loaded" if variant.startswith("sqlalchemy14") else "None"
    assert last_line(done.stdout).split() == [version, "True", expected_sitecustomize]
    assert djpool_lines(done.stderr)[0].startswith(DJPOOL_LINE)

    web = dynos(app, "web", {"DATABASE_URL": database_url})
    before = pg.connections_opened(application_name=appname)
    pids = {web.get("/pid/")[1]["pid"] for _ in range(20)}
    # One worker, one request at a time: one or two connections (the next
    # request can start before the last one's connection is back), reused.
    assert len(pids) <= POOL_SIZE + POOL_MAX_OVERFLOW
    assert pg.connections_opened(application_name=appname) - before == len(pids)


# -- today's Pythons: 3.14 (heroku/python's default) and 3.13 ------------------------


NEWER_PYTHONS = [
    ("forky", "3.14", "django61", "6.1"),  # a new app today
    ("trixie", "3.13", None, "5.2"),
]
# The root filesystems of the stacks DJPOOL_TEST_STACKS selects (by default forky's).
SELECTED_CHROOTS = {stacks.chroot_of(stack) for stack in stacks.extra_stacks()}


@pytest.mark.parametrize(
    ("chroot", "python", "variant", "django"),
    [case for case in NEWER_PYTHONS if case[0] in SELECTED_CHROOTS],
)
def test_an_app_on_a_newer_python_builds_and_pools(
    heroku_dir: Path,
    dynos,
    pg,
    appname: str,
    database_url: str,
    chroot: str,
    python: str,
    variant: str | None,
    django: str,
) -> None:
    """Built and run in a Debian root filesystem, whose Python the heroku/python stand-in copies."""
    root = stacks.CHROOTS_DIR / chroot
    assert (root / "usr" / "bin" / f"python{python}").exists(), stacks.SETUP_CHROOTS_HINT
    app = HerokuApp(
        sources(*filter(None, [variant])), heroku_dir / f"py{python}", BASE_CONFIG, root=root
    )
    build = app.build()
    assert build.ok, build.log
    assert re.search(rf"Python {re.escape(python)}\.\d+ in \.heroku/python", build.stdout)
    assert "       SQLAlchemy 2.1.9: djpool's private copy" in build.stdout
    found = subprocess.run(
        ["grep", "-rlF", str(build.build_dir), str(app.runtime_dir)], capture_output=True, text=True
    )
    assert found.returncode == 1, f"files naming the build dir:\n{found.stdout}"
    release = app.release(env={"DATABASE_URL": database_url})
    assert release.returncode == 0, release.stderr
    code = "import django, sys; print('%d.%d' % sys.version_info[:2], django.get_version())"
    version = app.run(f"python -c {shlex.quote(code)}").stdout.split()
    assert version[0] == python and version[1].startswith(django + "."), version

    web = dynos(app, "web", {"DATABASE_URL": database_url})
    assert len(djpool_lines(web.log_text())) == 1
    before = pg.connections_opened(application_name=appname)
    pids = set()
    for _ in range(20):
        status, body = web.get("/pid/")
        assert status == 200, body
        pids.add(body["pid"])
    # Two workers, one request at a time: a few connections, reused.
    assert len(pids) <= WORKERS * (POOL_SIZE + POOL_MAX_OVERFLOW)
    assert pg.connections_opened(application_name=appname) - before == len(pids)
