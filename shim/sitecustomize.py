"""djpool's startup hook, loaded by every Python process of the app.

The buildpack puts this directory first on PYTHONPATH, so Python's ``site``
imports this file as ``sitecustomize`` at interpreter start. It must stay
tiny, standard-library only and harmless:

1. run the app's own ``sitecustomize``, if one exists further along sys.path;
2. do nothing more unless DATABASE_URL is set, this is the interpreter djpool
   was installed for (DJPOOL_PYTHON_PREFIX, when set, must be this
   interpreter's sys.prefix and hold its executable: the operating system's
   own python3 started in the same environment is left alone, even with
   heroku/python's PYTHONHOME exported), and POOL_DISABLED is not true;
   with DJPOOL_DEBUG true, say which of these stopped it; ``python -m djpool``
   (the doctor) still gets djpool on sys.path, without the hook;
3. put djpool (../lib) and its private dependencies (../vendor) at the END
   of sys.path, so the app's own packages always win, and register the
   import hook (``djpool.importhook``) that hands over to
   ``djpool.startup.activate``. The rest (the configuration's checks, the
   start-up line, SQLAlchemy, the patch) waits until Django's PostgreSQL
   backend is first imported: a process that never touches Django pays
   about nothing (docs/benchmark.md: under 1 ms).

It never raises: a failure is one ``djpool:`` line on stderr and the process
carries on unpooled.
"""

import os
import sys

TYPE_CHECKING = False  # typing's flag, without importing typing at interpreter start
if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import ModuleType

# djpool.log.PREFIX (a unit test keeps them equal). A copy, because the shim
# must be able to say why djpool did not load when djpool cannot be imported.
PREFIX = "djpool: "
# djpool.startup.TARGET_MODULE (a unit test keeps them equal): the shim registers
# the hook itself, so djpool.startup is imported only when the backend is.
TARGET_MODULE = "django.db.backends.postgresql.base"


def _say(message: str) -> None:
    try:
        sys.stderr.write(PREFIX + message + "\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - stderr may be closed; never the reason to fail
        pass


def _run_original_sitecustomize(here: str) -> None:
    """Find and run the sitecustomize this file shadows, as site.py would have."""
    import importlib.machinery

    own = os.path.realpath(here)
    path = [p for p in sys.path if os.path.realpath(p or os.curdir) != own]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    import importlib.util  # only when there is one to run: it costs milliseconds

    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # site.py reports and carries on; so do we
        sys.stderr.write(
            "Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
            f"{type(error).__name__}: {error}\n"
        )


def _is_target_interpreter(environ: "Mapping[str, str]") -> bool:
    """True unless DJPOOL_PYTHON_PREFIX names another interpreter's installation.

    sys.prefix alone is not enough: heroku/python exports PYTHONHOME, which
    gives any Python started on the dyno (the OS's python3 too) that prefix.
    So the executable itself must also live under the expected prefix.
    """
    expected = environ.get("DJPOOL_PYTHON_PREFIX")
    if not expected:
        return True
    roots = {os.path.abspath(expected), os.path.realpath(expected)}
    if os.path.realpath(sys.prefix) not in roots:
        return False
    executable = sys.executable
    if not executable:
        return False
    candidates = {os.path.abspath(executable), os.path.realpath(executable)}
    return any(path.startswith(root + os.sep) for path in candidates for root in roots)


def _is_true(lib: str, raw: "str | None") -> bool:
    """``raw`` is one of djpool's true words (djpool/words.py, their one home).

    The file is loaded by its path, and only for a value that is not blank:
    a process that does not pool must not have djpool on sys.path or in
    sys.modules.
    """
    if not raw or not raw.strip():
        return False
    from importlib.machinery import SourceFileLoader

    loader = SourceFileLoader("djpool_words", os.path.join(lib, "djpool", "words.py"))
    words = type(sys)(loader.name)
    loader.exec_module(words)
    return words.truth(raw) is True


def why_not(environ: "Mapping[str, str]", lib: str) -> "str | None":
    """Why djpool must not load in this process, or None when it should."""
    if not environ.get("DATABASE_URL", "").strip():
        return "DATABASE_URL is not set"
    if not _is_target_interpreter(environ):
        return (
            f"this interpreter ({sys.executable or 'no executable'}, sys.prefix {sys.prefix}) "
            f"is not the one djpool was installed for "
            f"(DJPOOL_PYTHON_PREFIX={environ.get('DJPOOL_PYTHON_PREFIX')})"
        )
    if _is_true(lib, environ.get("POOL_DISABLED")):
        return f"POOL_DISABLED={environ.get('POOL_DISABLED')!r}"
    return None


def runs_djpool_command(argv: "list[str]") -> bool:
    """``python -m djpool ...``: djpool's own commands (the doctor) run even where no pool loads.

    argv: the interpreter's command line (``sys.orig_argv``, Python 3.10+).
    """
    return any(
        flag == "-m" and module == "djpool" for flag, module in zip(argv, argv[1:], strict=False)
    )


def _append_djpool_to_path(root: str) -> None:
    """djpool (../lib) and its private dependencies (../vendor), after the app's own packages."""
    for extra in (os.path.join(root, "lib"), os.path.join(root, "vendor")):
        if os.path.isdir(extra) and extra not in sys.path:
            sys.path.append(extra)


def main(environ: "Mapping[str, str]", here: str) -> None:
    """Run the app's sitecustomize, then load djpool unless ``why_not`` says otherwise."""
    _run_original_sitecustomize(here)
    root = os.path.dirname(here)
    lib = os.path.join(root, "lib")
    reason = why_not(environ, lib)
    if reason is not None:
        if _is_true(lib, environ.get("DJPOOL_DEBUG")):
            _say(f"not loaded: {reason} (DJPOOL_DEBUG)")
        if runs_djpool_command(list(getattr(sys, "orig_argv", ()))):
            _append_djpool_to_path(root)  # importable, no hook: the doctor says what is off
        return
    _append_djpool_to_path(root)
    from djpool.importhook import when_imported

    def activate(module: "ModuleType") -> None:
        from djpool import startup  # only now: a process that never imports Django never needs it

        startup.activate(module, environ)

    when_imported(TARGET_MODULE, activate)


if __name__ == "sitecustomize":  # site imports it so; a test may load it under another name
    try:
        main(os.environ, os.path.dirname(os.path.abspath(__file__)))
    except Exception as _error:  # noqa: BLE001 - never the reason an app fails to start
        _say(f"startup failed ({type(_error).__name__}: {_error}); running unpooled")
