"""Patch Django's PostgreSQL DatabaseWrapper: checkout in get_new_connection, checkin in _close.

Django keeps its own life cycle (connect at first query, close at the end of
each request through ``close_old_connections``); djpool only changes where a
connection comes from and where it goes. Django receives the raw driver
connection, so ``connection.connection.info``, autocommit and
``pg_version`` behave as without the pool.

- Checkout: the pool hands out an idle connection or calls Django's original
  ``get_new_connection`` (the per-connection setup: connect, isolation level,
  jsonb registration) once per physical connection. Per-checkout state that
  DISCARD ALL wiped is put back by Django itself (``connect`` sets autocommit,
  ``init_connection_state`` the time zone and ``assume_role``); the isolation
  level is re-applied here.
- Checkin: ``_close`` returns the connection; the pool's reset event cleans it.
- Pooled aliases behave as CONN_MAX_AGE=0: the connection goes back at the
  end of every request, while the pool keeps the server connection open.
- Aliases that use Django's own pool (OPTIONS["pool"]) and Django's internal
  no-database connection are left alone.

Patching the class in ``django.db.backends.postgresql.base`` covers its
subclasses (PostGIS, django-tenants, custom ENGINEs) as long as they call super().
"""

from __future__ import annotations

import functools
import threading
import time
from types import ModuleType
from typing import Any

from djpool import pool as pool_builder
from djpool.config import PoolSettings
from djpool.log import say_once
from djpool.registry import PoolEntry, PoolRegistry

_CHECKOUT = "_djpool_checkout"  # wrapper attribute: (fairy, PoolEntry) while checked out
_creating = threading.local()  # the factory for the connection the pool is opening now


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


def _open_for_pool() -> Any:
    """The pool's creator: runs Django's own get_new_connection for the current checkout."""
    return _creating.factory()


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


def install(base: ModuleType, registry: PoolRegistry, settings: PoolSettings) -> None:
    """Patch ``base.DatabaseWrapper`` (once) so its connections come from ``registry``'s pools."""
    wrapper_class = base.DatabaseWrapper
    if getattr(wrapper_class, "_djpool_patched", False):
        return
    from django.core.exceptions import ImproperlyConfigured
    from django.db.backends.base.base import NO_DB_ALIAS
    from django.db.utils import OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    original_get_new_connection = wrapper_class.get_new_connection
    original_close = wrapper_class._close
    isolation_levels = base.IsolationLevel
    unpoolable: set[str] = set()  # aliases whose pool could not be built

    def is_pooled(wrapper: Any) -> bool:
        if wrapper.alias == NO_DB_ALIAS:
            return False
        if wrapper.settings_dict.get("OPTIONS", {}).get("pool"):
            say_once(f"native:{wrapper.alias}",
                     f"database alias {wrapper.alias!r} uses Django's own pool "
                     "(OPTIONS['pool']); djpool leaves it alone")
            return False
        return True

    def make_pool(wrapper: Any) -> Any:
        driver = wrapper.Database.__name__
        return pool_builder.build(
            settings, driver, _open_for_pool,
            name=wrapper.alias,
            ping_every_checkout=bool(wrapper.settings_dict.get("CONN_HEALTH_CHECKS")),
        )

    def pool_entry(wrapper: Any, conn_params: dict[str, Any]) -> PoolEntry | None:
        """The wrapper's pool, or None (with one line) if no pool can be built for it."""
        if wrapper.alias in unpoolable:
            return None
        try:
            return registry.get(wrapper.alias, conn_params, lambda: make_pool(wrapper),
                                extra=(("TimeZone", getattr(wrapper, "timezone_name", None)),),
                                memo=wrapper.__dict__)
        except Exception as error:  # noqa: BLE001 - never take the app down
            unpoolable.add(wrapper.alias)
            say_once(f"unpoolable:{wrapper.alias}",
                     f"cannot build a pool for database alias {wrapper.alias!r} "
                     f"({type(error).__name__}: {error}); running it unpooled")
            return None

    def checkout(wrapper: Any, entry: PoolEntry,
                 conn_params: dict[str, Any]) -> tuple[Any, bool]:
        counters = entry.counters
        opened = []

        def factory() -> Any:
            try:
                connection = original_get_new_connection(
                    wrapper, with_session_time_zone(wrapper, conn_params))
            except Exception as error:
                counters.failed_connect, counters.failed_connect_at = error, time.monotonic()
                raise
            opened.append(connection)
            return connection

        started = time.monotonic()
        deadline = started + settings.timeout
        _creating.factory = factory
        try:
            while True:
                try:
                    fairy = entry.pool.connect()
                    break
                except PoolTimeout as error:
                    failure = counters.failed_connect
                    if failure is not None and counters.failed_connect_at >= started:
                        # Another request's connect failed while we waited: the server
                        # refuses, so say what it said instead of waiting it out.
                        raise type(failure)(str(failure)) from None
                    if time.monotonic() >= deadline:
                        raise exhausted(wrapper.alias) from error
        finally:
            _creating.factory = None
        return fairy, bool(opened) and opened[-1] is fairy.dbapi_connection

    def exhausted(alias: str) -> Exception:
        return OperationalError(
            f"djpool: connection pool for database alias {alias!r} is exhausted: "
            f"all {settings.size + settings.max_overflow} connections are in use "
            f"(POOL_SIZE={settings.size}, POOL_MAX_OVERFLOW={settings.max_overflow}) "
            f"and none came back within POOL_TIMEOUT={settings.timeout:g}s"
        )

    def apply_isolation_level(wrapper: Any, connection: Any) -> None:
        # Mirrors what get_new_connection does on a fresh connection.
        options = wrapper.settings_dict.get("OPTIONS", {})
        if "isolation_level" in options:
            value = options["isolation_level"]
            try:
                wrapper.isolation_level = isolation_levels(value)
            except ValueError:
                raise ImproperlyConfigured(
                    f"Invalid transaction isolation level {value} specified. "
                    "Use one of the psycopg.IsolationLevel values."
                ) from None
            connection.isolation_level = wrapper.isolation_level
        else:
            wrapper.isolation_level = isolation_levels.READ_COMMITTED
            if connection.isolation_level is not None:
                # Left by a checkout whose OPTIONS had one: the driver keeps it on
                # the client side, where DISCARD ALL cannot reach it.
                connection.isolation_level = None

    @functools.wraps(original_get_new_connection)
    def get_new_connection(self: Any, conn_params: dict[str, Any]) -> Any:
        if not is_pooled(self):
            return original_get_new_connection(self, conn_params)
        max_age = self.settings_dict.get("CONN_MAX_AGE", 0)
        if max_age != 0:
            say_once(f"max_age:{self.alias}",
                     f"database alias {self.alias!r} sets CONN_MAX_AGE={max_age!r}; "
                     "djpool treats it as 0: the connection goes back to the pool at the "
                     "end of each request and the pool keeps it open")
        entry = pool_entry(self, conn_params)
        if entry is None:
            return original_get_new_connection(self, conn_params)
        self.close_at = time.monotonic()  # CONN_MAX_AGE=0: return it when the request ends
        fairy, fresh = checkout(self, entry, conn_params)
        connection = fairy.dbapi_connection
        if not fresh:
            try:
                apply_isolation_level(self, connection)
            except BaseException:
                fairy.close()  # Django never got it: give it back before failing
                raise
        setattr(self, _CHECKOUT, (fairy, entry))
        registry.hold(self)
        return connection

    @functools.wraps(original_close)
    def _close(self: Any) -> Any:
        held = self.__dict__.pop(_CHECKOUT, None)
        if held is None:
            return original_close(self)
        fairy, entry = held
        # The connection may be someone else's the moment it is back, so Django
        # gets a stand-in that behaves as the closed connection its own _close()
        # would leave: inside an atomic block Django keeps it, so the rest of the
        # block fails instead of reconnecting and autocommitting; outside, its
        # close() replaces it with None right after.
        self.connection = ClosedConnection(self.Database)
        if registry.is_retired(entry.pool):
            fairy.invalidate()  # its pool was disposed: close instead of returning
        else:
            fairy.close()  # back to the pool; the reset event cleans it or discards it
        return None

    wrapper_class.get_new_connection = get_new_connection
    wrapper_class._close = _close
    wrapper_class._djpool_patched = True
    _patch_test_database_creation(wrapper_class.creation_class, registry)


def disown(wrapper: Any) -> list[Any]:
    """In a forked child: detach a wrapper from its parent's checkout, touching nothing."""
    held = wrapper.__dict__.pop(_CHECKOUT, None)
    if held is None:
        return []
    fairy, _entry = held
    connection = wrapper.connection
    wrapper.connection = None
    return [c for c in (connection, fairy) if c is not None]


def _patch_test_database_creation(creation_class: type, registry: PoolRegistry) -> None:
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
