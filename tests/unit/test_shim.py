"""The shim's decision, and what DJPOOL_DEBUG makes it say, run in-process with a given environ."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from djpool import log

LIB = Path(__file__).resolve().parents[2] / "lib"

URL = "postgres://u:hunter2@db.example.com/shop"


def test_the_shim_and_djpool_share_the_prefix(shim: ModuleType) -> None:
    assert shim.PREFIX == log.PREFIX


def test_the_shim_hooks_the_module_djpool_patches(shim: ModuleType) -> None:
    from djpool import startup

    assert shim.TARGET_MODULE == startup.TARGET_MODULE


def test_it_loads_with_a_url_in_this_interpreter(shim: ModuleType) -> None:
    assert shim.why_not({"DATABASE_URL": URL}, str(LIB)) is None
    assert shim.why_not({"DATABASE_URL": URL, "POOL_DISABLED": "off"}, str(LIB)) is None
    assert shim.why_not({"DATABASE_URL": URL, "DJPOOL_PYTHON_PREFIX": sys.prefix}, str(LIB)) is None


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({}, "DATABASE_URL is not set"),
        ({"DATABASE_URL": "  "}, "DATABASE_URL is not set"),
        ({"DATABASE_URL": URL, "POOL_DISABLED": " Yes"}, "POOL_DISABLED=' Yes'"),
    ],
)
def test_why_not(shim: ModuleType, environ: dict[str, str], reason: str) -> None:
    assert shim.why_not(environ, str(LIB)) == reason


def test_another_interpreter_is_named_with_its_executable_and_prefix(
    shim: ModuleType, tmp_path: Path
) -> None:
    reason = shim.why_not({"DATABASE_URL": URL, "DJPOOL_PYTHON_PREFIX": str(tmp_path)}, str(LIB))
    assert reason == (
        f"this interpreter ({sys.executable}, sys.prefix {sys.prefix}) is not the "
        f"one djpool was installed for (DJPOOL_PYTHON_PREFIX={tmp_path})"
    )


def test_a_false_word_never_loads_the_words_file(shim: ModuleType, tmp_path: Path) -> None:
    # Blank values are decided without reading lib/ (a tmp dir holds no djpool here).
    assert shim._is_true(str(tmp_path), "") is False
    assert shim._is_true(str(tmp_path), None) is False


@pytest.mark.parametrize(
    ("environ", "said"),
    [
        ({"DJPOOL_DEBUG": "1"}, "djpool: not loaded: DATABASE_URL is not set (DJPOOL_DEBUG)\n"),
        (
            {"DJPOOL_DEBUG": "true", "DATABASE_URL": URL, "POOL_DISABLED": "1"},
            "djpool: not loaded: POOL_DISABLED='1' (DJPOOL_DEBUG)\n",
        ),
        ({}, ""),
        ({"DJPOOL_DEBUG": "0"}, ""),
    ],
)
def test_djpool_debug_says_why_it_did_not_load(
    shim: ModuleType,
    capsys: pytest.CaptureFixture[str],
    environ: dict[str, str],
    said: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = list(sys.path)
    shim.main(environ, os.path.dirname(shim.__file__))
    assert capsys.readouterr().err == said
    assert sys.path == path  # nothing added when it does not load


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["python", "-m", "djpool", "doctor"], True),
        (["python", "-X", "dev", "-m", "djpool"], True),
        (["python", "-m", "djpool_other"], False),
        (["python", "-c", "import djpool"], False),
        (["python", "manage.py", "-m", "x"], False),
        ([], False),
    ],
)
def test_python_m_djpool_is_recognised(shim: ModuleType, argv: list[str], command: bool) -> None:
    assert shim.runs_djpool_command(argv) is command


def test_djpool_commands_import_djpool_where_the_pool_does_not_load(
    shim: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = os.path.dirname(shim.__file__)
    lib = os.path.join(os.path.dirname(here), "lib")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != lib])
    monkeypatch.setattr(sys, "orig_argv", ["python", "-c", "pass"], raising=False)
    shim.main({"DATABASE_URL": URL, "POOL_DISABLED": "1"}, here)
    assert lib not in sys.path
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "djpool", "doctor"], raising=False)
    shim.main({"DATABASE_URL": URL, "POOL_DISABLED": "1"}, here)
    assert sys.path[-1] == lib
