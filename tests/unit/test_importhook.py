"""importhook: a patch runs when its module is first imported (a temporary package)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from djpool import importhook


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package ``hooktarget`` with a module ``base`` that records it ran."""
    root = tmp_path / "hooktarget"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "base.py").write_text("ran = True\nVALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    meta_path = list(sys.meta_path)
    yield "hooktarget.base"
    sys.meta_path[:] = meta_path
    for name in ("hooktarget.base", "hooktarget"):
        sys.modules.pop(name, None)


def test_the_callback_runs_once_after_the_module_body(package: str) -> None:
    seen: list[tuple[str, int]] = []
    importhook.when_imported(package, lambda module: seen.append((module.__name__, module.VALUE)))
    assert seen == []  # nothing imported eagerly
    import hooktarget.base  # noqa: F401

    assert seen == [(package, 1)]
    assert not any(isinstance(f, importhook._PostImportFinder) for f in sys.meta_path)


def test_an_imported_module_is_patched_at_once(package: str) -> None:
    import hooktarget.base  # noqa: F401

    seen: list[ModuleType] = []
    importhook.when_imported(package, seen.append)
    assert seen == [sys.modules[package]]


def test_other_modules_pass_through(package: str) -> None:
    seen: list[ModuleType] = []
    importhook.when_imported(package, seen.append)
    import hooktarget  # noqa: F401

    assert seen == []


def test_a_failing_patch_never_breaks_the_import(
    package: str, fresh_logger: None, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(module: ModuleType) -> None:
        raise RuntimeError("no such attribute")

    importhook.when_imported(package, broken)
    import hooktarget.base

    assert hooktarget.base.ran is True
    assert capsys.readouterr().err == (
        "djpool: could not patch hooktarget.base "
        "(RuntimeError: no such attribute); running unpooled\n"
    )
