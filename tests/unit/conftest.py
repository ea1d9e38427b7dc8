"""The fast tier: djpool's pure logic in-process, no server, no subprocess.

lib/ goes first on sys.path so ``import djpool`` is this checkout's package;
the shim is loaded from its file under another name (``site`` would run it
as ``sitecustomize``), so only its functions run, with the environ a test
gives them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "lib"
SHIM = REPO / "shim" / "sitecustomize.py"

if str(LIB) not in sys.path:
    sys.path.insert(0, str(LIB))


@pytest.fixture(scope="session")
def shim() -> ModuleType:
    """shim/sitecustomize.py as a module named djpool_shim: its body runs nothing."""
    loader = SourceFileLoader("djpool_shim", str(SHIM))
    module = ModuleType(loader.name)
    module.__file__ = str(SHIM)
    loader.exec_module(module)
    return module


@pytest.fixture
def fresh_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No djpool logger yet, as in a process that has not warned (its handler then
    writes to the sys.stderr capsys put in place)."""
    from djpool import log

    manager = logging.Logger.manager
    saved = manager.loggerDict.pop(log.LOGGER_NAME, None)
    monkeypatch.setattr(log, "_logger", None)
    yield
    manager.loggerDict.pop(log.LOGGER_NAME, None)
    if saved is not None:
        manager.loggerDict[log.LOGGER_NAME] = saved
