"""registry: pool keys, one pool per key, the generation, and what a forked child does.

The pools here are stand-ins holding pipe ends where a real pool holds
driver connections: the registry only asks a pool for its idle connections
and to dispose of them, and the fork logic only touches file descriptors.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from djpool.registry import PoolRegistry, pool_key


class PipeConnection:
    """A pipe's write end where a driver connection has its socket."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()

    def fileno(self) -> int:
        return self.write_fd

    def reaches_the_pipe(self) -> bool:
        """What this process writes on the descriptor arrives in the pipe (the server session)."""
        os.write(self.write_fd, b"x")
        return os.read(self.read_fd, 1) == b"x"  # b"" (end of file) once it leads elsewhere


class PipePool:
    def __init__(self, idle: list[Any] | None = None) -> None:
        self.idle = idle or []
        self.disposed = False

    def idle_connections(self) -> list[Any]:
        return list(self.idle)

    def dispose(self) -> None:
        self.disposed = True


@pytest.fixture
def connections() -> Iterator[list[PipeConnection]]:
    made: list[PipeConnection] = []
    yield made
    for connection in made:
        for fd in (connection.read_fd, connection.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


PARAMS = {"dbname": "shop", "host": "db.example.com", "user": "u", "password": "p"}


def test_pool_key_orders_parameters_and_keeps_extra() -> None:
    reordered = dict(reversed(list(PARAMS.items())))
    assert pool_key("default", PARAMS) == pool_key("default", reordered)
    assert pool_key("default", PARAMS) != pool_key("other", PARAMS)
    assert pool_key("default", PARAMS, (("TimeZone", "UTC"),)) != pool_key("default", PARAMS)


def test_pool_key_counts_identity_only_objects_by_type_and_unhashables_by_repr() -> None:
    class Adapters:  # like psycopg's AdaptersMap: no __eq__ of its own
        pass

    first = pool_key("default", {**PARAMS, "context": Adapters()})
    assert first == pool_key("default", {**PARAMS, "context": Adapters()})
    unhashable = pool_key("default", {**PARAMS, "options": {"a": [1]}})
    hash(unhashable)
    assert ("options", "{'a': [1]}") in unhashable[1]


def test_one_pool_per_key_built_once_with_its_identity() -> None:
    registry = PoolRegistry()
    built: list[PipePool] = []

    def make() -> Any:
        built.append(PipePool())
        return built[-1]

    first = registry.get("default", PARAMS, make)
    assert registry.get("default", dict(PARAMS), make) is first
    other = registry.get("default", {**PARAMS, "dbname": "test_shop"}, make)
    assert other is not first and len(built) == 2
    assert (first.alias, first.dbname, first.host) == ("default", "shop", "db.example.com")
    assert registry.get("x", {"database": "d"}, make).dbname == "d"
    assert len(registry.entries()) == 3


def test_disposing_a_database_retires_its_pools_and_bumps_the_generation() -> None:
    registry = PoolRegistry()
    shop = registry.get("default", PARAMS, PipePool)
    other = registry.get("other", {**PARAMS, "dbname": "other"}, PipePool)
    generation = registry.generation
    assert registry.dispose_database("shop") == 1
    assert registry.generation > generation
    assert shop.pool.disposed and registry.is_retired(shop.pool)
    assert not other.pool.disposed and not registry.is_retired(other.pool)
    assert registry.get("default", PARAMS, PipePool) is not shop  # a new pool
    generation = registry.generation
    registry.dispose_all()
    assert registry.generation > generation and registry.entries() == []
    assert other.pool.disposed


def test_a_forked_child_forgets_the_parents_pools_and_silences_their_sockets(
    connections: list[PipeConnection],
) -> None:
    registry = PoolRegistry()
    idle, held = PipeConnection(), PipeConnection()
    connections += [idle, held]
    entry = registry.get("default", PARAMS, lambda: PipePool([idle]))

    class Wrapper:  # a Django wrapper holding a checkout
        connection: Any = held

    wrapper = Wrapper()
    registry.hold(wrapper)
    disowned: list[Any] = []

    def disown(holder: Any) -> list[Any]:
        disowned.append(holder)
        connection, holder.connection = holder.connection, None
        return [connection]

    generation = registry.generation
    registry.after_fork_in_child(disown)

    assert disowned == [wrapper] and wrapper.connection is None
    assert registry.entries() == [] and registry.generation > generation
    assert not entry.pool.disposed  # the parent's pool is never touched
    for connection in (idle, held):  # its descriptor now leads to /dev/null
        assert not connection.reaches_the_pipe()


def test_the_pipes_stand_in_for_sockets_until_the_fork(connections: list[PipeConnection]) -> None:
    connection = PipeConnection()
    connections.append(connection)
    assert connection.reaches_the_pipe()


def test_a_new_pool_after_fork_is_the_childs_own() -> None:
    registry = PoolRegistry()
    parents = registry.get("default", PARAMS, PipePool)
    registry.after_fork_in_child(lambda holder: [])
    assert registry.get("default", PARAMS, PipePool) is not parents
