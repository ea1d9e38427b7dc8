"""Run a function the moment a module is first imported (a post-import hook).

Why: the shim must not import Django (that would slow every Python process and
could run before the app configured anything). Instead it asks to be told
when ``django.db.backends.postgresql.base`` is imported, wherever that
happens, and patches it then. Standard library only, and imported at every
interpreter start of a pooled app: no ``typing``, no ``__future__`` (each an
import of its own), annotations as strings.
"""

import sys

TYPE_CHECKING = False  # typing's flag, without importing typing at interpreter start
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import ModuleType
    from typing import Any

    Callback = Callable[[ModuleType], None]


class _PatchingLoader:
    """Wraps the real loader; runs the callback after the module body ran.

    Plain classes, not importlib.abc's: the import system only needs these
    methods, and importing importlib.abc would add milliseconds to every
    Python start.
    """

    def __init__(self, loader: "Any", callback: "Callback") -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec: "Any") -> "Any":
        return self._loader.create_module(spec)

    def exec_module(self, module: "ModuleType") -> None:
        self._loader.exec_module(module)
        _run(self._callback, module)

    def __getattr__(self, name: str) -> "Any":  # get_source, get_code, is_package, ...
        return getattr(self._loader, name)


class _PostImportFinder:
    """Finds nothing itself: lets the other finders find the module, then wraps its loader."""

    def __init__(self, name: str, callback: "Callback") -> None:
        self.name = name
        self.callback = callback

    def find_spec(
        self,
        fullname: str,
        path: "Sequence[str] | None" = None,
        target: "ModuleType | None" = None,
    ) -> "Any":
        if fullname != self.name:
            return None
        spec: Any = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        sys.meta_path.remove(self)  # one shot: the module is imported once
        spec.loader = _PatchingLoader(spec.loader, self.callback)
        return spec


def _run(callback: "Callback", module: "ModuleType") -> None:
    try:
        callback(module)
    except Exception as error:  # noqa: BLE001 - the hook must never break an import
        from djpool.log import warn  # only now: logging is no start-up import

        warn(
            f"could not patch {module.__name__} ({type(error).__name__}: {error}); running unpooled"
        )


def when_imported(name: str, callback: "Callback") -> None:
    """Call ``callback(module)`` once ``name`` is imported (at once if it already is)."""
    module = sys.modules.get(name)
    if module is not None:
        _run(callback, module)
        return
    sys.meta_path.insert(0, _PostImportFinder(name, callback))
