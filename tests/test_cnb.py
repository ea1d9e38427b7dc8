"""The Cloud Native Buildpack (Heroku Fir), through a local emulator of the CNB lifecycle.

Two parts:

- The emulator itself (tests/support/cnb.py) against the Buildpack API 0.10
  rules, with a probe buildpack that records what it is given: the phases'
  environments start empty, env files are applied by the spec's rules,
  exec.d programs run with fd 3, cache layers come back and others do not.
- djpool's CNB (buildpack.toml, bin/detect, bin/build) in the group of the
  example project.toml: heroku/python (stand-in), djpool, heroku/procfile
  (stand-in). The sample app (tests/app with tests/buildpack_apps/base) is
  built once for the module; its processes are launched as the launcher
  launches them, and every assertion is about what the real PostgreSQL (the
  suite's ``pg``) and real HTTP show, as in tests/test_buildpack.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import textwrap
import tomllib
from pathlib import Path

import pytest

from support.cnb import (
    EXPORT_MTIME,
    IMAGE_PATH,
    CnbApp,
    DirectoryBuildpack,
    HerokuProcfile,
    HerokuPython,
    default_group,
    network_env,
    project_group,
)
from support.heroku import REPO
from support.logs import djpool_lines
from support.procs import free_port
from support.workers import (
    OWN_SQLALCHEMY_PROBE,
    every_worker_pools,
    first_query_in_every_worker,
    gunicorn_workers,
    peak_connections_under_load,
)

APP_SOURCE = REPO / "tests" / "app"
APPS = REPO / "tests" / "buildpack_apps"

WORKERS = 2
POOL_SIZE = 2
POOL_MAX_OVERFLOW = 1
BASE_CONFIG = {
    "WEB_CONCURRENCY": str(WORKERS),
    "POOL_SIZE": str(POOL_SIZE),
    "POOL_MAX_OVERFLOW": str(POOL_MAX_OVERFLOW),
}
DJPOOL_LINE = "djpool: pooling"
DJPOOL_LAYERS = "djpool_djpool"

# Builds take longer than the suite's default per-test timeout.
pytestmark = pytest.mark.timeout(900)


def sources(*variants: str) -> list[Path]:
    return [APP_SOURCE, APPS / "base", *(APPS / name for name in variants)]


def shell_python(code: str) -> str:
    """A one-off process running ``code`` in the app's Django shell."""
    return shlex.join(["python", "manage.py", "shell", "-c", code])


def last_line(text: str) -> str:
    """What the code printed last (Django 5.2's shell first says what it imported)."""
    return text.strip().splitlines()[-1]


PATCHED = (
    "from django.db import connection\n"
    "with connection.cursor() as c: c.execute('SELECT 1')\n"
    "import sqlalchemy\n"
    "from djpool import startup\n"
    "print('patched', startup.registry() is not None, sqlalchemy.__version__)"
)


def dead_index_config() -> dict[str, str]:
    """Config vars under which pip's download fails at once: the only index is a closed port.

    A config var is how a Fir user points a build at an index: the platform
    gives it to the build as <platform>/env/PIP_INDEX_URL.
    """
    return {"PIP_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple"}


@pytest.fixture(scope="module")
def cnb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cnb")


@pytest.fixture(scope="module")
def base_app(cnb_dir: Path, pg) -> CnbApp:
    """The sample app, built once with the CNB group, its release process run (migrations)."""
    app = CnbApp(sources(), cnb_dir / "base", BASE_CONFIG)
    build = app.build()
    assert build.ok, build.log
    release = app.launch(
        "release", env={"DATABASE_URL": pg.url(sslmode="require", application_name="cnb-release")}
    )
    assert release.returncode == 0, release.stderr
    app.release_result = release  # type: ignore[attr-defined]
    return app


@pytest.fixture
def processes():
    """Start processes with ``processes(app, "web", env)``; all are stopped after the test."""
    started = []

    def start(app: CnbApp, process_type: str = "web", env=None):
        process = app.start(process_type, env=env)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


# -- the emulator ------------------------------------------------------------------------

# One script for the probe's bin/detect and bin/build. It prints what it was
# given (its environment as the kernel handed it over, from /proc/self/environ,
# untouched by any interpreter) and, at build, writes layers that exercise every
# rule of the spec. /usr/bin/python3 is the build image's own Python.
PROBE = textwrap.dedent('''\
    #!/usr/bin/python3 -I
    import json, os, sys
    from pathlib import Path

    raw = Path("/proc/self/environ").read_bytes().split(b"\\0")
    env = dict(item.decode().split("=", 1) for item in raw if item)
    phase = Path(sys.argv[0]).name
    layers = Path(env.get("CNB_LAYERS_DIR", "/nonexistent"))
    found = {p.name: (p.read_text() if p.is_file() else "dir")
             for p in sorted(layers.glob("*"))} if phase == "build" else {}
    print("PROBE " + json.dumps({"phase": phase, "argv": sys.argv[1:], "env": env,
                                 "found": found, "cwd": os.getcwd()}))
    if phase == "detect" or env.get("PROBE_ROLE") != os.path.basename(
            env["CNB_BUILDPACK_DIR"]):
        sys.exit(0)

    def layer(name, launch=False, build=False, cache=False):
        path = layers / name
        path.mkdir(parents=True, exist_ok=True)
        (layers / f"{name}.toml").write_text(
            f"[types]\\nlaunch = {str(launch).lower()}\\nbuild = {str(build).lower()}\\n"
            f"cache = {str(cache).lower()}\\n\\n[metadata]\\nby = \\"probe\\"\\n")
        return path

    def put(path, value, mode=0o644):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
        path.chmod(mode)

    a = layer("a", launch=True)
    put(a / "env" / "SAME", "env-a")                    # no suffix: override
    put(a / "env.launch" / "SAME.override", "launch-a") # env.launch after env
    put(a / "env.launch" / "OVR.override", "launch-a")
    put(a / "env.launch" / "PATHY.prepend", "/a")
    put(a / "env.launch" / "PATHY.delim", ":")
    put(a / "env.launch" / "GLUED.prepend", "a")        # no .delim: nothing between
    put(a / "env.launch" / "TAIL.append", "-a")
    put(a / "env.launch" / "TAIL.delim", ",")
    put(a / "env.launch" / "DEF.default", "from-a")
    put(a / "exec.d" / "10-first", """#!/bin/sh
    printf 'EXECD = "ran"\\nSAW_OVR = "%s"\\n' "$OVR" >&3
    echo exec.d logs to stdout
    """, 0o755)
    put(a / "exec.d" / "probe" / "20-for-probe", """#!/bin/sh
    printf 'EXECD_PROBE = "%s"\\n' "$EXECD" >&3
    """, 0o755)
    b = layer("b", launch=True)
    put(b / "env.launch" / "PATHY.prepend", "/b")
    put(b / "env.launch" / "PATHY.delim", ":")
    put(b / "env.launch" / "GLUED.prepend", "b")
    put(b / "env.launch" / "DEF.default", "from-b")      # DEF is set already by a
    put(b / "env.launch" / "OVR", "launch-b")            # a later layer wins
    put(b / "env.launch" / "probe" / "OVR", "probe-b")   # for the probe process only
    put(b / "bin" / "probe-tool", "#!/bin/sh\\n", 0o755)
    tool = layer("tool", build=True)                     # for the next buildpack only
    put(tool / "env.build" / "TOOL", "1")
    put(tool / "bin" / "built-tool", "#!/bin/sh\\n", 0o755)
    kept = layer("kept", cache=True)
    count = int((kept / "count").read_text()) + 1 if (kept / "count").exists() else 1
    put(kept / "count", str(count))
    layer("scratch")                                      # no types: ignored
    put(layers / "launch.toml", """[[processes]]
    type = "probe"
    command = ["/usr/bin/python3", "-I", "-c",
               "import sys; sys.stdout.write(open('/proc/self/environ').read())"]
    default = true
    """)
''')


def probe_buildpack(root: Path, buildpack_id: str, clear_env: bool = False) -> DirectoryBuildpack:
    directory = root / buildpack_id.replace("/", "_")
    (directory / "bin").mkdir(parents=True)
    (directory / "buildpack.toml").write_text(
        f'api = "0.10"\n[buildpack]\nid = "{buildpack_id}"\nversion = "0.0.1"\n'
        f"clear-env = {str(clear_env).lower()}\n"
    )
    for phase in ("detect", "build"):
        (directory / "bin" / phase).write_text(PROBE)
        (directory / "bin" / phase).chmod(0o755)
    return DirectoryBuildpack(directory)


def probe_reports(log: str) -> list[dict]:
    return [
        json.loads(line[len("PROBE ") :]) for line in log.splitlines() if line.startswith("PROBE ")
    ]


def launched_env(app: CnbApp, process_type: str = "probe", env=None) -> dict[str, str]:
    done = app.launch(process_type, env=env)
    assert done.returncode == 0, done.stderr
    return dict(item.split("=", 1) for item in done.stdout.split("\0") if item)


# Variables these machines (and a developer's shell) export that no build or process may see.
RUNNER_ONLY = {
    "PYTHONDONTWRITEBYTECODE": "1",
    "PIP_FIND_LINKS": "/runner/wheels",
    "VIRTUAL_ENV": "/runner/venv",
    "PYTHONPATH": "/runner/path",
    "PYTHONHOME": "/runner/home",
    "UV_CACHE_DIR": "/runner/uv",
    "DJPOOL_CANARY": "runner",
    "POOL_SIZE": "999",
    "http_proxy": "http://runner:1",
}


@pytest.fixture
def probe_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CnbApp:
    """Two probe buildpacks (the first writes the layers), an app with a config var."""
    for name, value in RUNNER_ONLY.items():
        monkeypatch.setenv(name, value)
    source = tmp_path / "source"
    source.mkdir()
    (source / "app.txt").write_text("the app\n")
    group = [
        probe_buildpack(tmp_path / "buildpacks", "test/one"),
        probe_buildpack(tmp_path / "buildpacks", "test/two", clear_env=True),
    ]
    return CnbApp(
        source,
        tmp_path / "work",
        {"PROBE_ROLE": "test_one", "USER_VAR": "from-user", "PATH": "/user/bin"},
        group=group,
    )


def test_emulator_passes_nothing_of_the_runners_environment(probe_app: CnbApp) -> None:
    build = probe_app.build()
    assert build.ok, build.log
    reports = probe_reports(build.log)
    assert [(r["phase"], Path(r["env"]["CNB_BUILDPACK_DIR"]).name) for r in reports] == [
        ("detect", "test_one"),
        ("detect", "test_two"),
        ("build", "test_one"),
        ("build", "test_two"),
    ]
    network = set(network_env())
    for report in reports:
        env = report["env"]
        assert not set(env) & set(RUNNER_ONLY), report["phase"]
        allowed = {
            "HOME",
            "PATH",
            "CNB_PLATFORM_DIR",
            "CNB_BUILDPACK_DIR",
            "CNB_TARGET_OS",
            "CNB_TARGET_ARCH",
            "CNB_TARGET_DISTRO_NAME",
            "CNB_TARGET_DISTRO_VERSION",
            "CNB_BUILD_PLAN_PATH",
            "CNB_LAYERS_DIR",
            "CNB_BP_PLAN_PATH",
            "TOOL",
            "PROBE_ROLE",
            "USER_VAR",
            *network,
        }
        assert set(env) <= allowed, (report["phase"], set(env) - allowed)
        assert env["HOME"] == str(probe_app.home)
        assert report["cwd"] == str(probe_app.app_dir)
    detect_one, detect_two, build_one, build_two = reports
    # clear-env = false: the user's variables; PATH has the user's value in front.
    assert detect_one["env"]["USER_VAR"] == "from-user"
    assert detect_one["env"]["PATH"] == "/user/bin:" + IMAGE_PATH
    # clear-env = true: none of them.
    assert "USER_VAR" not in detect_two["env"] and "USER_VAR" not in build_two["env"]
    # The positional arguments the lifecycle still passes.
    assert detect_one["argv"] == [
        str(probe_app.platform_dir),
        detect_one["env"]["CNB_BUILD_PLAN_PATH"],
    ]
    assert build_one["argv"] == [
        build_one["env"]["CNB_LAYERS_DIR"],
        str(probe_app.platform_dir),
        build_one["env"]["CNB_BP_PLAN_PATH"],
    ]
    # A build layer of the first buildpack reaches the second one's build.
    tool = probe_app.layers_dir / "test_one" / "tool"
    assert build_two["env"]["TOOL"] == "1"
    assert build_two["env"]["PATH"] == f"{tool}/bin:" + IMAGE_PATH
    assert "TOOL" not in build_one["env"]

    launched = launched_env(probe_app)
    assert not set(launched) & set(RUNNER_ONLY)
    assert not {name for name in launched if name.startswith("CNB_")}
    assert not set(launched) & network


def test_emulator_applies_env_files_by_the_spec(probe_app: CnbApp) -> None:
    assert probe_app.build().ok
    layers = probe_app.layers_dir / "test_one"
    env = launched_env(probe_app, env={"TAIL": "user", "GLUED": "user"})
    assert env["OVR"] == "probe-b"  # env.launch/<process>/ over env.launch/; b after a
    assert env["SAME"] == "launch-a"  # env.launch/ over env/ in the same layer
    assert env["PATHY"] == "/b:/a"  # later layer first; nothing to join when it was empty
    assert env["GLUED"] == "bauser"  # no .delim: joined with nothing
    assert env["TAIL"] == "user,-a"
    assert env["DEF"] == "from-a"
    assert env["PATH"] == f"{layers}/b/bin:/user/bin"  # the config var PATH, then layers' bin
    assert env["USER_VAR"] == "from-user"
    # exec.d: after the env files (a's exec.d saw a's and b's values for all processes),
    # then exec.d/<process>, which sees what the first one set.
    assert env["EXECD"] == "ran" and env["SAW_OVR"] == "probe-b"
    assert env["EXECD_PROBE"] == "ran"
    # Not the probe process: no env.launch/probe, no exec.d/probe.
    done = probe_app.run(
        'printf \'%s|%s|%s\' "$OVR" "$EXECD" "${EXECD_PROBE-unset}"', env={"PATH": IMAGE_PATH}
    )  # the PATH config var has no bash
    assert done.stdout == "launch-b|ran|unset"


def test_emulator_keeps_cache_layers_and_only_launch_layers_in_the_image(probe_app: CnbApp) -> None:
    assert probe_app.build().ok
    layers = probe_app.layers_dir / "test_one"
    assert sorted(p.name for p in layers.iterdir()) == ["a", "a.toml", "b", "b.toml", "launch.toml"]
    assert (layers / "a" / "env.launch" / "OVR.override").stat().st_mtime == EXPORT_MTIME
    rebuild = probe_app.build()
    assert rebuild.ok, rebuild.log
    found = next(
        r
        for r in probe_reports(rebuild.log)
        if r["phase"] == "build" and r["env"]["CNB_BUILDPACK_DIR"].endswith("test_one")
    )
    # The cache layer and its metadata without [types]; the launch layers' metadata only.
    assert found["found"] == {
        "a.toml": '[metadata]\nby = "probe"\n',
        "b.toml": '[metadata]\nby = "probe"\n',
        "kept": "dir",
        "kept.toml": '[metadata]\nby = "probe"\n',
    }
    assert (probe_app.cache_dir / "test_one" / "kept" / "count").read_text() == "2"


def test_detect_requiring_what_nobody_provides_fails_the_group(tmp_path: Path) -> None:
    """Why djpool's detect must not require python: heroku/python provides nothing."""
    requiring = tmp_path / "requiring"
    (requiring / "bin").mkdir(parents=True)
    (requiring / "buildpack.toml").write_text(
        'api = "0.10"\n[buildpack]\nid = "test/requiring"\nversion = "0.0.1"\n'
    )
    (requiring / "bin" / "detect").write_text(
        '#!/bin/sh\nprintf \'[[requires]]\\nname = "python"\\n\' > "$CNB_BUILD_PLAN_PATH"\n'
    )
    (requiring / "bin" / "detect").chmod(0o755)
    source = tmp_path / "source"
    source.mkdir()
    (source / "requirements.txt").write_text("")
    app = CnbApp(source, tmp_path / "work", group=[HerokuPython(), DirectoryBuildpack(requiring)])
    build = app.build()
    assert not build.ok
    assert "do not resolve" in build.log


# -- detect -------------------------------------------------------------------------------


def cnb_detect(app_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """bin/detect as the lifecycle runs it: CNB_* set, the app dir the working dir."""
    platform = tmp_path / "platform"
    (platform / "env").mkdir(parents=True, exist_ok=True)
    plan = tmp_path / "plan.toml"
    plan.write_text("")
    return subprocess.run(
        [REPO / "bin" / "detect", platform, plan],
        cwd=app_dir,
        capture_output=True,
        text=True,
        env={
            "PATH": IMAGE_PATH,
            "HOME": str(tmp_path),
            "CNB_PLATFORM_DIR": str(platform),
            "CNB_BUILD_PLAN_PATH": str(plan),
            "CNB_BUILDPACK_DIR": str(REPO),
        },
    )


@pytest.mark.parametrize("marker", ["requirements.txt", "pyproject.toml", "Pipfile"])
def test_cnb_detect_passes_for_a_python_app_and_requires_nothing(
    tmp_path: Path, marker: str
) -> None:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / marker).write_text("")
    done = cnb_detect(app_dir, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "plan.toml").read_text() == ""


def test_cnb_detect_fails_with_100_for_anything_else(tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "package.json").write_text("{}")
    # A .heroku/python passes the classic detect, never a CNB's.
    (app_dir / ".heroku" / "python").mkdir(parents=True)
    done = cnb_detect(app_dir, tmp_path)
    assert done.returncode == 100
    assert " !     Error: djpool found no Python app" in done.stderr
    assert "project.toml" in done.stderr


def test_buildpack_toml_and_project_toml() -> None:
    descriptor = tomllib.loads((REPO / "buildpack.toml").read_text())
    assert descriptor["api"] == "0.10"
    assert descriptor["buildpack"]["id"] == "djpool/djpool"
    assert [(t["os"], t["arch"]) for t in descriptor["targets"]] == [
        ("linux", "amd64"),
        ("linux", "arm64"),
    ]
    assert project_group() == ["heroku/python", "djpool/djpool", "heroku/procfile"]
    group = default_group()  # what the emulator builds with
    assert [bp.id for bp in group] == project_group()
    assert isinstance(group[0], HerokuPython) and isinstance(group[2], HerokuProcfile)
    assert group[1].path == REPO


# -- the build -----------------------------------------------------------------------------


def test_build_puts_djpool_into_a_launch_layer(base_app: CnbApp) -> None:
    build = base_app.builds[-1]
    assert build.detected == ["heroku/python", "djpool/djpool", "heroku/procfile"]
    # clear-env: the config vars reach heroku/python's build, not djpool's (it reads the files).
    assert build.envs["build:heroku/python"]["POOL_SIZE"] == str(POOL_SIZE)
    assert "POOL_SIZE" not in build.envs["build:djpool/djpool"]
    assert "       SQLAlchemy 2.1.9: djpool's private copy" in build.log
    assert "       dj-database-url 3.1.2: the app's own copy" in build.log
    layers = base_app.layers_dir / DJPOOL_LAYERS
    runtime = layers / "runtime"
    # In the image: the launch layer only; the wheels went to the cache.
    assert sorted(p.name for p in layers.iterdir()) == ["runtime", "runtime.toml"]
    assert tomllib.loads((layers / "runtime.toml").read_text())["types"] == {
        "launch": True,
        "build": False,
        "cache": False,
    }
    cached = base_app.cache_dir / DJPOOL_LAYERS
    assert tomllib.loads((cached / "wheels.toml").read_text())["types"] == {
        "launch": False,
        "build": False,
        "cache": True,
    }
    assert list((cached / "wheels").glob("djpool/wheels/sqlalchemy-2.1.9-*.whl"))
    root = runtime / "djpool"
    assert (root / "shim" / "sitecustomize.py").is_file()
    assert (root / "lib" / "djpool" / "startup.py").is_file()
    assert (root / "vendor" / "sqlalchemy").is_dir()
    assert not (runtime / "lib").exists()  # a layer's lib/ would go onto LD_LIBRARY_PATH
    launch = runtime / "env.launch"
    assert sorted(p.name for p in launch.iterdir()) == [
        "DJPOOL_PYTHON_PREFIX.override",
        "PYTHONPATH.delim",
        "PYTHONPATH.prepend",
    ]
    assert (launch / "PYTHONPATH.prepend").read_text() == str(root / "shim")
    assert (launch / "PYTHONPATH.delim").read_text() == ":"
    venv = base_app.layers_dir / "heroku_python" / "venv"
    assert (launch / "DJPOOL_PYTHON_PREFIX.override").read_text() == str(venv)
    # The app's own venv got nothing.
    assert not list(venv.glob("lib/python*/site-packages/sqlalchemy"))


def test_documented_build_output_is_the_real_one(base_app: CnbApp) -> None:
    """docs/buildpack.md's CNB build log, against a real build (paths, versions, numbers aside)."""
    doc = (REPO / "docs" / "buildpack.md").read_text()
    documented = doc.split("After heroku/python, the build log shows:\n\n```\n", 1)[1]
    documented = documented.split("```", 1)[0]
    log = base_app.builds[-1].log
    real = log[log.index("-----> djpool: checking") :]
    real = real[: real.index("\n", real.index("-----> djpool is installed")) + 1]

    def normal(text: str) -> list[str]:
        text = text.replace(str(base_app.layers_dir), "/layers")
        text = re.sub(r"Python \d+\.\d+\.\d+", "Python 3.x.y", text)
        text = re.sub(r"(POOL_\w+=)\d+", r"\1N", text)
        text = re.sub(r"(Saved sqlalchemy-[\d.]+-cp3)\S*\.whl", r"\1...", text)
        return text.splitlines()

    assert normal(real) == normal(documented)


def test_launch_layer_names_nothing_that_is_gone_at_launch(base_app: CnbApp) -> None:
    """Neither the buildpack's dir, nor the platform dir, nor the cache-only wheels layer."""
    runtime = base_app.layers_dir / DJPOOL_LAYERS / "runtime"
    for gone in (REPO, base_app.platform_dir, base_app.layers_dir / DJPOOL_LAYERS / "wheels"):
        found = subprocess.run(
            ["grep", "-rlF", str(gone), str(runtime)], capture_output=True, text=True
        )
        assert found.returncode == 1, f"files naming {gone}:\n{found.stdout}"


def test_bytecode_is_valid_at_launch(base_app: CnbApp, database_url: str) -> None:
    """The exporter reset every mtime: hash-based .pyc files still match; nothing is rewritten."""
    root = base_app.layers_dir / DJPOOL_LAYERS / "runtime" / "djpool"
    pyc = next((root / "lib" / "djpool").glob("__pycache__/startup.*.pyc"))
    assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b11  # checked-hash

    def snapshot() -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}

    before = snapshot()
    done = base_app.run(shell_python(PATCHED), env={"DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    assert last_line(done.stdout) == "patched True 2.1.9"
    assert snapshot() == before


def test_invalid_pool_size_fails_the_build_and_keeps_the_image(cnb_dir: Path) -> None:
    app = CnbApp(sources(), cnb_dir / "bad-pool-size", {"POOL_SIZE": "5"})
    assert app.build().ok
    image = sorted(str(p) for p in app.layers_dir.rglob("*"))
    app.config["POOL_SIZE"] = "abc"
    build = app.build()
    assert not build.ok
    assert " !     Error: a djpool config var is not valid." in build.log
    assert (
        " !     POOL_SIZE='abc' is not valid: expected a whole number from 1 to 1000" in build.log
    )
    assert "ERROR: failed to build: djpool/djpool" in build.log
    assert sorted(str(p) for p in app.layers_dir.rglob("*")) == image


def test_missing_python_fails_the_build(cnb_dir: Path) -> None:
    """heroku/python left out of the group: no venv, and the error says how to list it."""
    group = [bp for bp in default_group() if bp.id != "heroku/python"]
    app = CnbApp(sources(), cnb_dir / "no-python", BASE_CONFIG, group=group)
    build = app.build()
    assert not build.ok
    assert " !     Error: Python is not installed in this build." in build.log
    assert 'id = "heroku/python"' in build.log
    assert "Internal error" not in build.log


def test_warm_cache_rebuild_downloads_nothing(cnb_dir: Path, pg) -> None:
    app = CnbApp(sources(), cnb_dir / "warm", BASE_CONFIG)
    cold = app.build()
    assert cold.ok, cold.log
    assert "Downloading into the build cache" in cold.log
    wheels = app.cache_dir / DJPOOL_LAYERS / "wheels" / "djpool" / "wheels"
    before = sorted(p.name for p in wheels.iterdir())
    app.config.update(dead_index_config())
    warm = app.build()
    assert warm.ok, warm.log
    assert "       Installed from the build cache, nothing downloaded" in warm.log
    assert "Downloading" not in warm.log
    assert sorted(p.name for p in wheels.iterdir()) == before
    done = app.run(shell_python(PATCHED), env={"DATABASE_URL": pg.url(sslmode="require")})
    assert done.returncode == 0, done.stderr
    assert last_line(done.stdout) == "patched True 2.1.9"


def test_cold_cache_with_no_index_reachable_fails_clearly(cnb_dir: Path) -> None:
    """The control for the test above: the same config does stop a build that must download."""
    app = CnbApp(sources(), cnb_dir / "cold", {**BASE_CONFIG, **dead_index_config()})
    build = app.build()
    assert not build.ok
    assert " !     Error: could not download djpool's dependencies." in build.log


def test_uv_app_builds_without_pip(
    cnb_dir: Path, processes, pg, appname: str, database_url: str
) -> None:
    app = CnbApp([APP_SOURCE, APPS / "uv"], cnb_dir / "uv", BASE_CONFIG)
    build = app.build()
    assert build.ok, build.log
    assert "uv sync --locked" in build.log
    assert "       SQLAlchemy 2.1.9: djpool's private copy" in build.log
    # djpool's build had no pip: none on PATH, none in the venv.
    env = build.envs["build:djpool/djpool"]
    venv = Path(env["VIRTUAL_ENV"])
    layer_bins = [d for d in env["PATH"].split(":") if d.startswith(str(app.layers_dir))]
    assert layer_bins and not any((Path(d) / "pip").exists() for d in layer_bins)
    assert (
        subprocess.run(
            [venv / "bin" / "python", "-m", "pip", "--version"], env=env, capture_output=True
        ).returncode
        != 0
    )
    web = processes(app, "web", {"DATABASE_URL": database_url, "WEB_CONCURRENCY": "1"})
    pids = {web.get("/pid/")[1]["pid"] for _ in range(10)}
    assert len(pids) <= POOL_SIZE + POOL_MAX_OVERFLOW
    assert pg.connections_opened(application_name=appname) == len(pids)
    assert len(djpool_lines(web.log_text())) == 1


@pytest.mark.parametrize(
    ("variant", "version"), [("sqlalchemy14", "1.4.54"), ("sqlalchemy2", "2.0.41")]
)
def test_the_apps_own_sqlalchemy_is_kept_and_pools(
    cnb_dir: Path, processes, pg, appname: str, database_url: str, variant: str, version: str
) -> None:
    app = CnbApp(sources(variant), cnb_dir / variant, {**BASE_CONFIG, "WEB_CONCURRENCY": "1"})
    build = app.build()
    assert build.ok, build.log
    assert f"       SQLAlchemy {version}: the app's own copy" in build.log
    assert "privately" not in build.log
    assert not (app.layers_dir / DJPOOL_LAYERS / "runtime" / "djpool" / "vendor").exists()
    code = OWN_SQLALCHEMY_PROBE
    # On Fir nothing puts the app dir on sys.path before Python's site runs, so
    # an app's own sitecustomize.py runs only if the app's PYTHONPATH names the
    # app dir; then the shim, first on PYTHONPATH, runs it too.
    done = app.run(
        shell_python(code), env={"DATABASE_URL": database_url, "PYTHONPATH": str(app.app_dir)}
    )
    assert done.returncode == 0, done.stderr
    expected_sitecustomize = "loaded" if variant == "sqlalchemy14" else "None"
    assert last_line(done.stdout).split() == [version, "True", expected_sitecustomize]

    web = processes(app, "web", {"DATABASE_URL": database_url})
    before = pg.connections_opened(application_name=appname)
    pids = {web.get("/pid/")[1]["pid"] for _ in range(20)}
    assert len(pids) <= POOL_SIZE + POOL_MAX_OVERFLOW
    assert pg.connections_opened(application_name=appname) - before == len(pids)


# -- launched processes ------------------------------------------------------------------


def test_release_process_runs_with_djpool(base_app: CnbApp) -> None:
    release = base_app.release_result
    assert len(djpool_lines(release.stderr)) == 1
    assert djpool_lines(release.stderr)[0].startswith(DJPOOL_LINE)
    assert "password" not in release.stderr.lower()


def test_one_off_shell_is_pooled(base_app: CnbApp, pg, appname: str, database_url: str) -> None:
    code = (
        "from django.db import connection\n"
        "from djpool import startup\n"
        "pids = set()\n"
        "for _ in range(5):\n"
        "    with connection.cursor() as c:\n"
        "        c.execute('SELECT pg_backend_pid()'); pids.add(c.fetchone()[0])\n"
        "    connection.close()\n"
        "print('patched', startup.registry() is not None, len(pids))"
    )
    done = base_app.run(shell_python(code), env={"DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    # Django closes its connection five times; the pool keeps the one server connection.
    assert last_line(done.stdout) == "patched True 1"
    assert pg.connections_opened(application_name=appname) == 1
    assert djpool_lines(done.stderr)[0].startswith(DJPOOL_LINE)


def test_every_web_worker_pools(
    base_app: CnbApp, processes, pg, appname: str, database_url: str
) -> None:
    web = processes(base_app, "web", {"DATABASE_URL": database_url, "POOL_MAX_OVERFLOW": "0"})
    backends_of, requests = every_worker_pools(web, WORKERS, POOL_SIZE)
    assert len(djpool_lines(web.log_text())) == 1  # --preload: the master loads djpool once
    everything = set().union(*backends_of.values())
    assert pg.connections_opened(application_name=appname) == len(everything) < requests


def test_server_connections_stay_bounded_under_load(
    base_app: CnbApp, processes, pg, appname: str, database_url: str
) -> None:
    """16 clients at once against 2 workers x 4 threads, with 2 x 3 pooled connections."""
    pool_size = 3
    web = processes(
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


def test_pool_disabled_leaves_the_app_unpooled(
    base_app: CnbApp, processes, pg, appname: str, database_url: str
) -> None:
    web = processes(base_app, "web", {"DATABASE_URL": database_url, "POOL_DISABLED": "1"})
    pids = [web.get("/pid/")[1]["pid"] for _ in range(5)]
    assert len(set(pids)) == 5  # a new server connection for every request
    assert pg.connections_opened(application_name=appname) == 5
    assert djpool_lines(web.log_text()) == []
    status, body = web.get("/whoami/")
    assert status == 200 and body["djpool"] is False


def test_launch_environment(base_app: CnbApp) -> None:
    """What the layers give every process: the shim first, the venv's Python, nothing else."""
    venv = base_app.layers_dir / "heroku_python" / "venv"
    shim = base_app.layers_dir / DJPOOL_LAYERS / "runtime" / "djpool" / "shim"
    show = (
        'python -c \'import os, sys; print(os.environ["PYTHONPATH"]); '
        'print(os.environ["DJPOOL_PYTHON_PREFIX"]); print(sys.prefix)\''
    )
    assert base_app.run(show).stdout.split() == [str(shim), str(venv), str(venv)]
    own = base_app.run(show, env={"PYTHONPATH": "/srv/extra"})
    assert own.stdout.split()[0] == f"{shim}:/srv/extra"


@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="no /usr/bin/python3")
def test_the_systems_python_is_left_alone(base_app: CnbApp, database_url: str) -> None:
    """/usr/bin/python3 (VIRTUAL_ENV set) imports the shim, first on PYTHONPATH; it stays out."""
    code = (
        "import os, sys; print(sys.prefix); print(os.environ['VIRTUAL_ENV']); "
        "print(*sys.path, sep='\\n')"
    )
    done = base_app.run(
        shlex.join(["/usr/bin/python3", "-c", code]), env={"DATABASE_URL": database_url}
    )
    assert done.returncode == 0, done.stderr
    prefix, virtual_env, *path = done.stdout.splitlines()
    assert prefix == "/usr"
    assert virtual_env == str(base_app.layers_dir / "heroku_python" / "venv")
    root = base_app.layers_dir / DJPOOL_LAYERS / "runtime" / "djpool"
    assert str(root / "shim") in path
    assert str(root / "lib") not in path
    assert done.stderr == ""


def test_the_base_interpreter_under_the_venv_is_left_alone(
    base_app: CnbApp, database_url: str
) -> None:
    """heroku/python's own Python (the venv's base) does not see the app's packages: no djpool."""
    python = base_app.layers_dir / "heroku_python" / "python" / "bin" / "python3"
    code = "import sys; print(sys.prefix); print('djpool' in sys.modules)"
    done = base_app.run(
        shlex.join([str(python), "-c", code]),
        env={"DATABASE_URL": database_url, "DJPOOL_DEBUG": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(python.parent.parent), "False"]
    # DJPOOL_DEBUG: the shim says why it stayed out.
    [line] = djpool_lines(done.stderr)
    assert line.startswith("djpool: not loaded: this interpreter"), line
