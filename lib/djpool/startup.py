"""What djpool does once Django's PostgreSQL backend is imported: config, patch, one line.

At interpreter start the shim only registers a post-import hook on that
backend (``djpool.importhook``): every Python process of the app runs the
shim, and most of them (scripts, tools, ``python -c``) never touch Django.
``activate`` runs the moment the backend is first imported: the
dependencies are looked for, the configuration is read and validated,
SQLAlchemy is imported, the patch applied and the one start-up line
written. Bad configuration ends there in one ``djpool:`` line and an
unpooled process, never in an exception. ``start`` registers the same hook
for callers other than the shim.

No ``typing`` or ``__future__`` here (annotations as strings), everything
else imported inside the functions: cheap to import wherever it is.
"""

import sys

from djpool.importhook import when_imported

TYPE_CHECKING = False  # typing's flag, without importing typing at interpreter start
if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import ModuleType

    from djpool.config import Config
    from djpool.registry import PoolRegistry

TARGET_MODULE = "django.db.backends.postgresql.base"
MIN_SQLALCHEMY = (1, 4)

_registry: "PoolRegistry | None" = None  # the process's pools once the patch is in


def start(environ: "Mapping[str, str]") -> None:
    """Arrange for ``activate`` to run when Django's PostgreSQL backend is first imported."""

    def patch(module: "ModuleType") -> None:
        activate(module, environ)

    when_imported(TARGET_MODULE, patch)


def activate(base: "ModuleType", environ: "Mapping[str, str]") -> bool:
    """Validate the configuration, patch ``base`` and say so in one line; True if pooled."""
    from djpool.log import say

    missing = missing_dependencies()
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        say(f"{' and '.join(missing)} {verb} not installed; running unpooled")
        return False
    from djpool import config as config_module

    try:
        config = config_module.load(environ)
    except config_module.ConfigError as error:
        say(f"{error}; running unpooled")
        return False
    if config is None:
        return False
    if not _install(base, config):
        return False
    pooler = config.pooler.describe()
    say(
        f"pooling {config.database.describe()}: {config.pool.describe()} per process"
        + (f"; {pooler}" if pooler else "")
    )
    return True


def missing_dependencies() -> "list[str]":
    """The runtime dependencies this interpreter cannot import (found without importing)."""
    wanted = {"sqlalchemy": "SQLAlchemy", "dj_database_url": "dj-database-url"}
    return [name for module, name in wanted.items() if not _findable(module)]


def _findable(module: str) -> bool:
    # What importlib.util.find_spec does for a top-level name, without importing it.
    if module in sys.modules:
        return True
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is not None and find_spec(module, None) is not None:
            return True
    return False


def _install(base: "ModuleType", config: "Config") -> bool:
    global _registry
    import atexit
    import os

    import sqlalchemy

    from djpool.log import warn

    version = tuple(int(part) for part in sqlalchemy.__version__.split(".")[:2])
    if version < MIN_SQLALCHEMY:
        warn(
            f"SQLAlchemy {sqlalchemy.__version__} is installed; djpool needs 1.4 or later; "
            "running unpooled"
        )
        return False
    from djpool import django_patch, metrics
    from djpool.registry import PoolRegistry

    metrics.install(config.metrics.interval, config.metrics.dyno)
    metrics.on_first_pool(_register_opentelemetry)
    pools = PoolRegistry(on_new_pool=metrics.pool_opened)
    django_patch.install(base, pools, config.pool, config.pooler)
    _registry = pools
    os.register_at_fork(after_in_child=lambda: pools.after_fork_in_child(django_patch.disown))
    atexit.register(pools.dispose_all)
    return True


def _register_opentelemetry() -> None:
    """The pools as OpenTelemetry instruments, if the app has opentelemetry-api."""
    from djpool import otel

    otel.install()


def registry() -> "PoolRegistry | None":
    """The live PoolRegistry (None until Django's PostgreSQL backend was imported)."""
    return _registry
