"""reset: its error paths, driven by libpq itself on a connection that never reached a server."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import pq

from djpool import reset


@pytest.fixture
def failed_pgconn() -> Any:
    """A real libpq connection whose connect failed (nothing listens on that socket)."""
    pgconn = pq.PGconn.connect(b"host=/nonexistent-djpool-socket-dir dbname=x connect_timeout=1")
    assert pgconn.status == pq.ConnStatus.BAD
    yield pgconn
    pgconn.finish()


class Record:
    """The part of SQLAlchemy's connection record the reset uses."""

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}
        self.invalidated: list[BaseException] = []

    def invalidate(self, error: BaseException) -> None:
        self.invalidated.append(error)


def test_nothing_pending_means_nothing_to_read() -> None:
    reset.finish(object(), {})  # never touches the connection


def test_a_pending_reset_on_a_broken_connection_fails_and_says_why(failed_pgconn: Any) -> None:
    class Connection:
        pgconn = failed_pgconn

    info = {reset.PENDING: True}
    with pytest.raises(reset.ResetFailed) as raised:
        reset.finish(Connection(), info)
    assert str(raised.value).startswith("OperationalError: ")
    assert reset.PENDING not in info  # read once: a retry never waits for it again


def test_a_reset_that_fails_invalidates_the_connection_with_one_warning(
    failed_pgconn: Any, fresh_logger: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg

    connection = psycopg.Connection(failed_pgconn)  # closed: every statement fails
    record = Record()
    assert reset.on_reset(connection, record) is False
    assert len(record.invalidated) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(
        "djpool: discarded a pooled connection whose reset failed "
        "(OperationalError: the connection is "
    )


def test_a_connection_being_closed_is_not_reset() -> None:
    class State:
        terminate_only = True

    assert reset.on_reset(object(), Record(), State()) is True
