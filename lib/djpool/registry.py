"""One pool per process per (alias, connection parameters), and what happens at fork.

Keying by the full connection parameters (not just the alias) is what lets
``manage.py test`` swap NAME to ``test_<name>`` and get a pool of its own, and
lets TIME_ZONE or OPTIONS changes start clean pools instead of handing out
connections configured for other settings.

Fork safety: a forked child inherits its parent's sockets. If the child ever
wrote on one (a query, a Terminate message, a TLS close_notify when the
connection object is freed) the parent's session would break. So in the child,
at fork time, every inherited connection's socket descriptor is pointed at
/dev/null and the objects are kept referenced: nothing the child does can
reach the parent's server sessions, and the child builds pools of its own.

Standard library only: the caller's ``make`` builds each pool, so this
bookkeeping is tested in the fast tier with pipes standing in for sockets.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from djpool.counters import PoolCounters
    from djpool.pool import Pool

PoolKey = tuple[str, tuple[tuple[str, Any], ...]]


@dataclass(eq=False)
class PoolEntry:
    """A pool with what it was built for."""

    alias: str
    dbname: str
    host: str
    pool: Pool

    @property
    def counters(self) -> PoolCounters:
        return self.pool.counters

    def stats(self, reset_waits: bool = False) -> dict[str, Any]:
        """This pool's identity, settings, state, totals and recent waits (``djpool.stats()``)."""
        return {
            "alias": self.alias,
            "database": self.dbname,
            "host": self.host,
            **self.pool.stats(reset_waits),
        }

    def idle_connections(self) -> list[Any]:
        """The driver connections waiting in the pool now (for inspection; never use them)."""
        return self.pool.idle_connections()


def pool_key(
    alias: str, conn_params: Mapping[str, Any], extra: tuple[tuple[str, Any], ...] = ()
) -> PoolKey:
    """A hashable key for (alias, parameters, extra).

    Values compared only by identity (instances without their own __eq__,
    like psycopg 3's AdaptersMap that Django passes as ``context``) count by
    their type: the same settings can produce two such objects (Django builds
    them in an lru_cache that is not atomic), and keying by identity would
    then split one database into two pools. What they encode (the time zone)
    is in ``extra``. Unhashable values count by their repr.
    """
    items = []
    for name in sorted(conn_params):
        value = conn_params[name]
        if not isinstance(value, type) and _compares_by_identity(value):
            value = f"<{type(value).__module__}.{type(value).__qualname__}>"
        else:
            try:
                hash(value)
            except TypeError:
                value = repr(value)
        items.append((name, value))
    return alias, tuple(items) + tuple(extra)


def _compares_by_identity(value: object) -> bool:
    equals: object = type(value).__eq__
    return equals is object.__eq__


class PoolRegistry:
    """The process's pools, created on first use, thread-safe, reset in forked children."""

    def __init__(self, on_new_pool: Callable[[], None] | None = None) -> None:
        self._on_new_pool = on_new_pool  # told after a pool was built (metrics start with it)
        self._lock = threading.Lock()
        self._pools: dict[PoolKey, PoolEntry] = {}
        self._retired: weakref.WeakSet[Pool] = weakref.WeakSet()
        self._holders: weakref.WeakSet[Any] = weakref.WeakSet()
        self._inherited: list[Any] = []  # kept alive in a child, never used or freed
        self._generation = 0

    @property
    def generation(self) -> int:
        """Bumped whenever pools are dropped: an entry remembered at an older one may be gone."""
        return self._generation

    def get(
        self,
        alias: str,
        conn_params: Mapping[str, Any],
        make: Callable[[], Pool],
        extra: tuple[tuple[str, Any], ...] = (),
    ) -> PoolEntry:
        """The pool for these parameters, built by ``make`` the first time."""
        key = pool_key(alias, conn_params, extra)
        entry = self._pools.get(key)
        if entry is not None:
            return entry
        with self._lock:
            entry = self._pools.get(key)
            if entry is not None:
                return entry
            dbname = conn_params.get("dbname") or conn_params.get("database") or ""
            entry = PoolEntry(alias, str(dbname), str(conn_params.get("host") or ""), make())
            self._pools[key] = entry
        if self._on_new_pool is not None:
            self._on_new_pool()
        return entry

    def entries(self) -> list[PoolEntry]:
        """A snapshot of the live pools."""
        return list(self._pools.values())

    def stats(self, reset_waits: bool = False) -> list[dict[str, Any]]:
        """One plain dict per live pool: see ``PoolEntry.stats``."""
        return [entry.stats(reset_waits) for entry in self.entries()]

    def is_retired(self, pool: Pool) -> bool:
        """True for a pool that was disposed: connections coming back to it are closed."""
        return pool in self._retired

    def dispose_database(self, dbname: str) -> int:
        """Close this process's idle connections to ``dbname`` so it can be dropped or cloned."""
        with self._lock:
            doomed = [key for key, entry in self._pools.items() if entry.dbname == dbname]
            entries = [self._pools.pop(key) for key in doomed]
            self._generation += 1
        self._retire(entry.pool for entry in entries)
        return len(entries)

    def dispose_all(self) -> None:
        """Close every idle connection (at exit: the server sees a clean goodbye)."""
        with self._lock:
            entries = list(self._pools.values())
            self._pools.clear()
            self._generation += 1
        self._retire(entry.pool for entry in entries)

    def _retire(self, pools: Iterable[Pool]) -> None:
        for pool in pools:
            self._retired.add(pool)
            pool.dispose()

    # -- checked-out connections held by Django wrappers --------------------

    def hold(self, wrapper: Any) -> None:
        """Remember a wrapper that holds a checkout, so a forked child can disown it."""
        self._holders.add(wrapper)

    def holders(self) -> list[Any]:
        """The wrappers that held a checkout and are still alive (some may have given it back)."""
        return list(self._holders)

    def after_fork_in_child(self, disown: Callable[[Any], Iterable[Any]]) -> None:
        """In a new child: forget the parent's pools and checkouts without touching them.

        ``disown(wrapper)`` detaches a wrapper's checkout and yields the driver
        connections it held, so their sockets can be neutralised too.
        """
        self._lock = threading.Lock()  # another thread may have held it at fork time
        inherited = list(self._pools.values())
        self._pools = {}
        self._generation += 1
        connections: list[Any] = []
        for entry in inherited:
            connections.extend(entry.idle_connections())
        for wrapper in list(self._holders):
            connections.extend(disown(wrapper))
        self._holders = weakref.WeakSet()
        for connection in connections:
            _neutralise_socket(connection)
        self._inherited.extend(inherited)
        self._inherited.extend(connections)


def _neutralise_socket(connection: Any) -> None:
    """Point this process's copy of the socket at /dev/null: the parent's stays untouched."""
    try:
        fd = connection.fileno()
    except Exception:  # noqa: BLE001 - closed already: nothing to protect
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
