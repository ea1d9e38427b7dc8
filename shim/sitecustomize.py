"""djpool's startup hook, loaded by every Python process of the app.

The buildpack puts this directory first on PYTHONPATH, so Python's ``site``
imports this file as ``sitecustomize`` at interpreter start. It must stay
tiny, standard-library only and harmless:

1. run the app's own ``sitecustomize``, if one exists further along sys.path;
2. do nothing more unless DATABASE_URL is set, POOL_DISABLED is not true,
   and this is the interpreter djpool was installed for (DJPOOL_PYTHON_PREFIX,
   when set, must be this interpreter's sys.prefix and hold its executable:
   the operating system's own python3 started in the same environment is
   left alone, even with heroku/python's PYTHONHOME exported);
3. put djpool (../lib) and its private dependencies (../vendor) at the END
   of sys.path, so the app's own packages always win, and hand over to
   ``djpool.startup``, which registers the import hook that patches Django.

It never raises: a failure is one ``djpool:`` line on stderr and the process
carries on unpooled.
"""

import os
import sys

_TRUE_WORDS = ("1", "true", "yes", "on")


def _run_original_sitecustomize(here):
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


def _is_target_interpreter(environ):
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


def _main():
    here = os.path.dirname(os.path.abspath(__file__))
    _run_original_sitecustomize(here)
    environ = os.environ
    if not environ.get("DATABASE_URL", "").strip():
        return
    if environ.get("POOL_DISABLED", "").strip().lower() in _TRUE_WORDS:
        return
    if not _is_target_interpreter(environ):
        return
    root = os.path.dirname(here)
    for extra in (os.path.join(root, "lib"), os.path.join(root, "vendor")):
        if os.path.isdir(extra) and extra not in sys.path:
            sys.path.append(extra)
    from djpool import startup

    startup.start(environ)


try:
    _main()
except Exception as _error:  # noqa: BLE001 - never the reason an app fails to start
    try:
        sys.stderr.write(
            f"djpool: startup failed ({type(_error).__name__}: {_error}); running unpooled\n"
        )
    except Exception:  # noqa: BLE001
        pass
