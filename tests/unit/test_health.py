"""health: the zero-timeout socket check, with a pipe standing in for the socket."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from djpool import health


class PipeEnd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


@pytest.fixture
def pipe() -> Iterator[tuple[PipeEnd, int]]:
    read_fd, write_fd = os.pipe()
    yield PipeEnd(read_fd), write_fd
    for fd in (read_fd, write_fd):
        try:
            os.close(fd)
        except OSError:
            pass


def test_a_quiet_socket_has_no_news(pipe: tuple[PipeEnd, int]) -> None:
    assert health.socket_has_news(pipe[0]) is False


def test_bytes_from_the_server_are_news(pipe: tuple[PipeEnd, int]) -> None:
    os.write(pipe[1], b"E")  # a FATAL message arriving
    assert health.socket_has_news(pipe[0]) is True


def test_a_hangup_is_news(pipe: tuple[PipeEnd, int]) -> None:
    os.close(pipe[1])  # the server closed its end
    assert health.socket_has_news(pipe[0]) is True


def test_any_doubt_is_news() -> None:
    class Closed:
        def fileno(self) -> int:
            raise ValueError("closed")

    assert health.socket_has_news(Closed()) is True


def test_a_connection_opened_for_this_checkout_is_not_checked() -> None:
    assert health.is_alive(object(), {}, ping_every_checkout=True) is True


def test_a_recent_quiet_connection_passes_without_a_round_trip(pipe: tuple[PipeEnd, int]) -> None:
    info: dict[str, Any] = {}
    health.on_checkin(pipe[0], type("Record", (), {"info": info})())
    assert info and time.monotonic() - next(iter(info.values())) < 60
    assert health.is_alive(pipe[0], info, ping_every_checkout=False) is True
