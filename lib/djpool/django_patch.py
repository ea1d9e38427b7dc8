"""Patch Django's PostgreSQL DatabaseWrapper: checkout in get_new_connection, checkin in _close.

Django keeps its own life cycle (connect at first query, close at the end of
each request through ``close_old_connections``); djpool only changes where a
connection comes from and where it goes. Django receives the raw driver
connection, so ``connection.connection.info``, autocommit and
``pg_version`` behave as without the pool.

- Checkout: the pool hands out an idle connection or calls Django's original
  ``get_new_connection`` (the per-connection setup: connect, isolation level,
  jsonb registration) once per physical connection. On a reused connection
  the isolation level is re-applied here (the driver keeps it, out of DISCARD
  ALL's reach); then Django's ``connect`` sets autocommit and
  ``init_connection_state`` the time zone and ``assume_role``. After DISCARD
  ALL the session is at the defaults of its startup packet, which carries
  Django's time zone, and the driver is in autocommit, so those two steps
  would change nothing and are skipped (a few µs per checkout;
  bench/session_setup.py). Django runs them as usual with ``assume_role``,
  behind a transaction pooler, and for a subclass that overrides one of
  Django's session setup hooks (``_SESSION_SETUP_HOOKS``).
- Checkin: ``_close`` returns the connection; the pool's reset event cleans it.
- Pooled aliases behave as CONN_MAX_AGE=0: the connection goes back at the
  end of every request, while the pool keeps the server connection open.
- Aliases that use Django's own pool (OPTIONS["pool"]) and Django's internal
  no-database connection are left alone.
- Aliases behind a transaction pooler (pooler.py) are decided when Django
  makes their wrapper: no server-side cursors, no prepared statements, no
  startup options of djpool's, no DISCARD ALL at checkin.

Patching the class in ``django.db.backends.postgresql.base`` covers its
subclasses (PostGIS, django-tenants, custom ENGINEs) as long as they call super().
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from django.db.backends.base.base import NO_DB_ALIAS

from djpool import metrics
from djpool import pool as pool_builder
from djpool import pooler as pooler_mode
from djpool.config import PoolSettings, TransactionPooler
from djpool.log import warn_once
from djpool.pool import Pool, PoolExhausted
from djpool.registry import PoolEntry, PoolRegistry

# Attributes djpool keeps on the wrappers it patches (their own __dict__ is
# the cheapest per-connection store: a WeakKeyDictionary lookup costs ~0.4 µs,
# a tenth of a whole checkout):
_CHECKOUT = "_djpool_checkout"  # (fairy, PoolEntry) while checked out
_LAST_POOL = "_djpool_last_pool"  # _LastPool of the wrapper's last checkout
# Set by a checkout that handed out a reused connection whose DISCARD ALL put the
# session back to the defaults of its startup packet, where Django's time zone
# is: connect()'s per-connection setup would find nothing to change.
_AT_SESSION_DEFAULTS = "_djpool_at_session_defaults"
# The methods through which Django's init_connection_state sets up a session
# (5.1+: _configure_*, 4.2: ensure_*). A subclass that overrides one of them
# does its own setup there, so its checkouts never skip it.
_SESSION_SETUP_HOOKS = (
    "_configure_connection",
    "_configure_timezone",
    "_configure_role",
    "ensure_timezone",
    "ensure_role",
)

# What a wrapper's last checkout used: (registry generation, conn_params, extra, entry).
_LastPool = tuple[int, dict[str, Any], tuple[tuple[str, Any], ...], PoolEntry]


class ClosedConnection:
    """What ``DatabaseWrapper.connection`` holds after a checkin inside an atomic block.

    Like a closed driver connection: ``closed`` is true, ``close()`` does
    nothing, and anything else raises the driver's InterfaceError.
    """

    closed = True

    def __init__(self, driver: ModuleType) -> None:
        self._driver = driver

    def close(self) -> None:
        """Closing a closed connection is a no-op, as in the drivers."""

    def __getattr__(self, name: str) -> Any:
        raise self._driver.InterfaceError("connection already closed")


def with_session_time_zone(wrapper: Any, conn_params: dict[str, Any]) -> dict[str, Any]:
    """Connection parameters that make Django's time zone the session default.

    DISCARD ALL puts every setting back to its session default. Django sets
    the time zone with ``SET TIME ZONE`` whenever the server's differs from
    the one it wants (even 'Etc/UTC' against 'UTC'), so after each reset that
    would cost a round trip at the next checkout. Sent in the startup packet
    (``options=-c TimeZone=...``) it is the session default: the reset keeps
    it and Django finds nothing to change.
    """
    zone = getattr(wrapper, "timezone_name", None)
    if not zone:
        return conn_params
    option = "-c TimeZone=" + str(zone).replace("\\", "\\\\").replace(" ", "\\ ")
    existing = conn_params.get("options")
    return {**conn_params, "options": f"{existing} {option}" if existing else option}


def keeps_djangos_session_setup(wrapper_class: type, backend_class: type) -> bool:
    """Whether ``wrapper_class`` sets up sessions as the PostgreSQL backend does."""
    return all(
        getattr(wrapper_class, name, None) is getattr(backend_class, name, None)
        for name in _SESSION_SETUP_HOOKS
    )


def is_pooled(wrapper: Any) -> bool:
    """False for Django's internal no-database connection and aliases using Django's own pool."""
    if wrapper.alias == NO_DB_ALIAS:
        return False
    if wrapper.settings_dict.get("OPTIONS", {}).get("pool"):
        warn_once(
            f"native:{wrapper.alias}",
            f"database alias {wrapper.alias!r} uses Django's own pool "
            "(OPTIONS['pool']); djpool leaves it alone",
        )
        return False
    return True


def apply_isolation_level(wrapper: Any, connection: Any, levels: Any) -> None:
    """Put back OPTIONS' isolation level on a reused connection, as get_new_connection does.

    levels: the backend's IsolationLevel enum.
    """
    options = wrapper.settings_dict.get("OPTIONS", {})
    if "isolation_level" in options:
        value = options["isolation_level"]
        try:
            wrapper.isolation_level = levels(value)
        except ValueError:
            from django.core.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(
                f"Invalid transaction isolation level {value} specified. "
                "Use one of the psycopg.IsolationLevel values."
            ) from None
        connection.isolation_level = wrapper.isolation_level
    else:
        wrapper.isolation_level = levels.READ_COMMITTED
        if connection.isolation_level is not None:
            # Left by a checkout whose OPTIONS had one: the driver keeps it on
            # the client side, where DISCARD ALL cannot reach it.
            connection.isolation_level = None


def exhausted_error(alias: str, settings: PoolSettings) -> Exception:
    """Django's OperationalError for a checkout that waited POOL_TIMEOUT in vain."""
    from django.db.utils import OperationalError

    error: Exception = OperationalError(
        f"djpool: connection pool for database alias {alias!r} is exhausted: "
        f"all {settings.size + settings.max_overflow} connections are in use "
        f"(POOL_SIZE={settings.size}, POOL_MAX_OVERFLOW={settings.max_overflow}) "
        f"and none came back within POOL_TIMEOUT={settings.timeout:g}s"
    )
    return error


def report_exhausted(registry: PoolRegistry, entry: PoolEntry, settings: PoolSettings) -> None:
    """The pool_exhausted event line: the pool now, and how long its oldest checkout is out.

    A checkout's start is the ``close_at`` djpool gave its wrapper (CONN_MAX_AGE=0:
    the moment it asked for the connection), so finding the oldest costs
    nothing on the way in, only here, when a request is about to fail anyway.
    """
    now = time.monotonic()
    ages = []
    for wrapper in registry.holders():
        held = wrapper.__dict__.get(_CHECKOUT)
        started = getattr(wrapper, "close_at", None)
        if held is not None and held[1] is entry and isinstance(started, float):
            ages.append(now - started)
    metrics.pool_exhausted(entry.stats(), max(ages) if ages else None, settings.timeout)


class PooledConnections:
    """Where a pooled DatabaseWrapper's connections come from and go back to.

    registry: the process's pools.
    connect: Django's own ``get_new_connection``, which opens each physical
        connection (connect, isolation level, jsonb registration).
    isolation_levels: the backend's IsolationLevel enum.
    backend_class: the DatabaseWrapper class patched (subclasses are told
        apart from it by ``keeps_djangos_session_setup``).
    """

    def __init__(
        self,
        registry: PoolRegistry,
        settings: PoolSettings,
        connect: Callable[[Any, dict[str, Any]], Any],
        isolation_levels: Any,
        backend_class: type,
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._connect = connect
        self._isolation_levels = isolation_levels
        self._backend_class = backend_class
        self._unpoolable: set[str] = set()  # aliases whose pool could not be built
        self._session_setup_kept: dict[type, bool] = {}  # keeps_djangos_session_setup, per class
        # Why a thread-local: SQLAlchemy calls a pool's creator with no arguments
        # of ours, inside pool.connect() on the thread checking out, while the
        # pool is shared by all threads. Django's get_new_connection needs that
        # checkout's wrapper (it sets isolation_level on it) and parameters, so
        # they travel here, set around the checkout.
        self._opening = threading.local()

    def open(self, wrapper: Any, conn_params: dict[str, Any]) -> Any | None:
        """A pooled driver connection for ``wrapper``; None if it cannot be pooled."""
        max_age = wrapper.settings_dict.get("CONN_MAX_AGE", 0)
        if max_age != 0:
            warn_once(
                f"max_age:{wrapper.alias}",
                f"database alias {wrapper.alias!r} sets CONN_MAX_AGE={max_age!r}; "
                "djpool treats it as 0: the connection goes back to the pool at the "
                "end of each request and the pool keeps it open",
            )
        behind_pooler = pooler_mode.is_behind(wrapper)
        if behind_pooler:
            conn_params = pooler_mode.connection_params(wrapper, conn_params)
        entry = self._entry(wrapper, conn_params)
        if entry is None:
            return None
        wrapper.close_at = time.monotonic()  # CONN_MAX_AGE=0: return it when the request ends
        opening = self._opening
        opening.request, opening.opened = (wrapper, conn_params), None
        try:
            fairy = entry.pool.checkout()
        except PoolExhausted as error:
            report_exhausted(self._registry, entry, self._settings)
            raise exhausted_error(wrapper.alias, self._settings) from error
        finally:
            opened, opening.request, opening.opened = opening.opened, None, None
        connection = fairy.dbapi_connection
        reused = opened is not connection
        if reused:  # DISCARD ALL cannot reach this setting
            try:
                apply_isolation_level(wrapper, connection, self._isolation_levels)
            except BaseException:
                fairy.close()  # Django never got it: give it back before failing
                raise
        wrapper.__dict__[_AT_SESSION_DEFAULTS] = (
            reused
            and not behind_pooler
            and not wrapper.settings_dict["OPTIONS"].get("assume_role")
            and self._keeps_session_setup(type(wrapper))
        )
        wrapper.__dict__[_CHECKOUT] = (fairy, entry)
        self._registry.hold(wrapper)
        return connection

    def _keeps_session_setup(self, wrapper_class: type) -> bool:
        kept = self._session_setup_kept.get(wrapper_class)
        if kept is None:
            kept = keeps_djangos_session_setup(wrapper_class, self._backend_class)
            self._session_setup_kept[wrapper_class] = kept
        return kept

    def close(self, wrapper: Any) -> bool:
        """Give ``wrapper``'s pooled connection back; False if it holds none."""
        held = wrapper.__dict__.pop(_CHECKOUT, None)
        if held is None:
            return False
        fairy, entry = held
        # The connection may be someone else's the moment it is back, so Django
        # gets a stand-in that behaves as the closed connection its own _close()
        # would leave: inside an atomic block Django keeps it, so the rest of the
        # block fails instead of reconnecting and autocommitting; outside, its
        # close() replaces it with None right after.
        wrapper.connection = ClosedConnection(wrapper.Database)
        if self._registry.is_retired(entry.pool):
            fairy.invalidate()  # its pool was disposed: close instead of returning
        else:
            fairy.close()  # back to the pool; the reset event cleans it or discards it
        return True

    def _entry(self, wrapper: Any, conn_params: dict[str, Any]) -> PoolEntry | None:
        """The wrapper's pool, or None (with one line) if no pool can be built for it."""
        extra = (("TimeZone", getattr(wrapper, "timezone_name", None)),)
        generation = self._registry.generation
        # The wrapper's last pool: building the pool key costs more than the rest
        # of a checkout, so it is skipped while nothing changed.
        last: _LastPool | None = wrapper.__dict__.get(_LAST_POOL)
        if (
            last is not None
            and last[0] == generation
            and last[2] == extra
            and last[1] == conn_params
        ):
            return last[3]
        if wrapper.alias in self._unpoolable:
            return None
        try:
            entry = self._registry.get(
                wrapper.alias, conn_params, lambda: self._build(wrapper), extra
            )
        except Exception as error:  # noqa: BLE001 - never take the app down
            self._unpoolable.add(wrapper.alias)
            warn_once(
                f"unpoolable:{wrapper.alias}",
                f"cannot build a pool for database alias {wrapper.alias!r} "
                f"({type(error).__name__}: {error}); running it unpooled",
            )
            return None
        wrapper.__dict__[_LAST_POOL] = (generation, dict(conn_params), extra, entry)
        return entry

    def _build(self, wrapper: Any) -> Pool:
        return pool_builder.build(
            self._settings,
            wrapper.Database.__name__,
            self._open_for_pool,
            name=wrapper.alias,
            ping_every_checkout=bool(wrapper.settings_dict.get("CONN_HEALTH_CHECKS")),
            discard=not pooler_mode.is_behind(wrapper),
        )

    def _open_for_pool(self) -> Any:
        """The pools' creator: Django's own get_new_connection for this thread's checkout.

        Behind a transaction pooler the time zone is not put in the startup
        packet: PgBouncer before 1.20 refuses ``options``, and it keeps
        Django's SET TIME ZONE for the client across server connections.
        """
        wrapper, conn_params = self._opening.request
        if not pooler_mode.is_behind(wrapper):
            conn_params = with_session_time_zone(wrapper, conn_params)
        connection = self._connect(wrapper, conn_params)
        self._opening.opened = connection
        return connection


def install(
    base: ModuleType,
    registry: PoolRegistry,
    settings: PoolSettings,
    pooler: TransactionPooler | None = None,
) -> None:
    """Patch ``base.DatabaseWrapper`` (once) so its connections come from ``registry``'s pools.

    pooler: which aliases are behind a transaction pooler, decided as each
        wrapper is made (None: none).
    """
    wrapper_class = base.DatabaseWrapper
    if getattr(wrapper_class, "_djpool_patched", False):
        return
    original_init = wrapper_class.__init__
    original_get_new_connection = wrapper_class.get_new_connection
    original_close = wrapper_class._close
    pooled = PooledConnections(
        registry, settings, original_get_new_connection, base.IsolationLevel, wrapper_class
    )
    transaction_pooler = pooler or TransactionPooler()

    @functools.wraps(original_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        try:
            if is_pooled(self):
                pooler_mode.adapt(self, transaction_pooler)
        except Exception as error:  # noqa: BLE001 - never take the app down
            warn_once(
                f"pooler-failed:{self.alias}",
                f"cannot tell whether database alias {self.alias!r} is behind a transaction "
                f"pooler ({type(error).__name__}: {error}); treating it as a direct connection",
            )

    @functools.wraps(original_get_new_connection)
    def get_new_connection(self: Any, conn_params: dict[str, Any]) -> Any:
        connection = pooled.open(self, conn_params) if is_pooled(self) else None
        if connection is None:
            return original_get_new_connection(self, conn_params)
        return connection

    @functools.wraps(original_close)
    def _close(self: Any) -> Any:
        return None if pooled.close(self) else original_close(self)

    wrapper_class.__init__ = __init__
    wrapper_class.get_new_connection = get_new_connection
    wrapper_class._close = _close
    wrapper_class._djpool_patched = True
    _patch_session_setup(wrapper_class)
    _patch_test_database_creation(wrapper_class.creation_class, registry)


def _patch_session_setup(wrapper_class: Any) -> None:
    """Skip connect()'s session setup on a checkout that ``PooledConnections.open`` marked.

    The mark (``_AT_SESSION_DEFAULTS``) says the reset left the session at its
    startup defaults, where Django's time zone is, and the driver in autocommit.
    """
    original_set_autocommit = wrapper_class._set_autocommit
    original_init_connection_state = wrapper_class.init_connection_state

    @functools.wraps(original_set_autocommit)
    def _set_autocommit(self: Any, autocommit: bool) -> None:
        # connect() asks for AUTOCOMMIT; the reset left the driver in autocommit.
        if self.__dict__.get(_AT_SESSION_DEFAULTS) and self.connection.autocommit == autocommit:
            return
        original_set_autocommit(self, autocommit)

    @functools.wraps(original_init_connection_state)
    def init_connection_state(self: Any) -> None:
        if self.__dict__.pop(_AT_SESSION_DEFAULTS, False):
            # Only the base class's once-per-alias version check: the time zone
            # is the session default and there is no assume_role to put back.
            super(wrapper_class, self).init_connection_state()
            return
        original_init_connection_state(self)

    wrapper_class._set_autocommit = _set_autocommit
    wrapper_class.init_connection_state = init_connection_state


def disown(wrapper: Any) -> list[Any]:
    """In a forked child: detach a wrapper from its parent's checkout, touching nothing."""
    held = wrapper.__dict__.pop(_CHECKOUT, None)
    if held is None:
        return []
    fairy, _entry = held
    connection = wrapper.connection
    wrapper.connection = None
    return [c for c in (connection, fairy) if c is not None]


def _patch_test_database_creation(creation_class: Any, registry: PoolRegistry) -> None:
    """Dispose a database's pools before Django creates, clones or drops it.

    Idle pooled connections would otherwise make PostgreSQL refuse with
    "database ... is being accessed by other users".
    """
    original_create = creation_class._create_test_db
    original_clone = creation_class._clone_test_db
    original_destroy = creation_class._destroy_test_db

    @functools.wraps(original_create)
    def _create_test_db(self: Any, *args: Any, **kwargs: Any) -> Any:
        registry.dispose_database(self._get_test_db_name())
        return original_create(self, *args, **kwargs)

    @functools.wraps(original_clone)
    def _clone_test_db(self: Any, suffix: Any, *args: Any, **kwargs: Any) -> Any:
        registry.dispose_database(self.connection.settings_dict["NAME"])
        registry.dispose_database(self.get_test_db_clone_settings(suffix)["NAME"])
        return original_clone(self, suffix, *args, **kwargs)

    @functools.wraps(original_destroy)
    def _destroy_test_db(self: Any, test_database_name: str, *args: Any, **kwargs: Any) -> Any:
        registry.dispose_database(test_database_name)
        return original_destroy(self, test_database_name, *args, **kwargs)

    creation_class._create_test_db = _create_test_db
    creation_class._clone_test_db = _clone_test_db
    creation_class._destroy_test_db = _destroy_test_db
