"""A TCP proxy on 127.0.0.1 that breaks the link between the app and PostgreSQL on demand.

The tests point DATABASE_URL at the proxy and the proxy at the server; bytes
(TLS included) pass through untouched until a test asks for a fault:

- ``cut("rst")`` / ``cut("fin")``: drop every open link at once, both ends,
  with a TCP reset (a crashed middlebox, a failover) or an orderly close;
- ``stall()``: stop forwarding and make every link a black hole, as when a
  route disappears: the proxy's sockets stay open but its kernel stops
  acknowledging anything (a drop-all BPF socket filter is attached to them),
  so the peers' TCP keepalive probes and retransmissions go unanswered and
  only their own timeouts (``keepalives_*``, ``tcp_user_timeout``) can end
  the wait. New connections are black-holed too (their SYNs are dropped);
- ``cut(pg_client_port=p)`` / ``stall(pg_client_port=p)``: the same for the
  one link PostgreSQL sees coming from port ``p`` (``pg_stat_activity.client_port``),
  so one connection of a pool fails while the others carry on;
- ``resume()``: forward again; what the peers retransmitted meanwhile arrives;
- ``delay``: every chunk leaves ``delay`` seconds after it arrived, each way.

Why a socket filter: a proxy that merely stops reading still has its kernel
acknowledge data and keepalive probes, so a client would wait forever and no
client-side setting could bound the stall. A filter drops segments before TCP
sees them, only for this proxy's sockets, and needs no privilege, no firewall
and no change to the loopback device that other processes share.

One thread runs a poll() loop over every socket; the public methods hand their
work to it and wait, so a fault applies to all links at one instant::

    with TcpProxy(pg.host, pg.port) as proxy:
        url = pg.url(port=proxy.port, sslmode="require")
        ...
        proxy.cut()
"""

from __future__ import annotations

import collections
import ctypes
import errno
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
CHUNK = 65536
MAX_BUFFERED = 1 << 20  # stop reading a side while this much waits to be written

_SO_ATTACH_FILTER = 26
_SO_DETACH_FILTER = 27
# Classic BPF, one instruction: BPF_RET | BPF_K with k = 0, "keep 0 bytes" = drop.
_DROP_ALL = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))
_DROP_ALL_PROGRAM = struct.pack("HL", 1, ctypes.addressof(_DROP_ALL))


def _black_hole(sock: socket.socket, on: bool) -> None:
    """Drop (or stop dropping) every segment that arrives for ``sock``."""
    try:
        if on:
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, _DROP_ALL_PROGRAM)
        else:
            sock.setsockopt(socket.SOL_SOCKET, _SO_DETACH_FILTER, 0)
    except OSError as error:
        if not on and error.errno == errno.ENOENT:  # no filter was attached
            return
        if error.errno != errno.EBADF:
            raise


@dataclass
class _Pipe:
    """One direction of a link: bytes read from ``source`` wait here to go to ``sink``."""

    source: socket.socket
    sink: socket.socket
    chunks: collections.deque[tuple[float, bytes]] = field(default_factory=collections.deque)
    buffered: int = 0
    source_done: bool = False  # EOF read from source
    sink_shut: bool = False  # EOF passed on to sink

    def finished(self) -> bool:
        return self.sink_shut


@dataclass
class _Link:
    client: socket.socket
    server: socket.socket
    stalled: bool = False
    up: _Pipe = field(init=False)
    down: _Pipe = field(init=False)

    def __post_init__(self) -> None:
        self.up = _Pipe(self.client, self.server)
        self.down = _Pipe(self.server, self.client)

    def sockets(self) -> tuple[socket.socket, socket.socket]:
        return self.client, self.server

    def pg_client_port(self) -> int:
        """The port PostgreSQL sees this link come from (pg_stat_activity.client_port)."""
        try:
            port: int = self.server.getsockname()[1]
        except OSError:
            return -1
        return port


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``, with faults on demand.

    Parameters:
        target_host, target_port: where the bytes go (the PostgreSQL server).
        delay: seconds each chunk is held in each direction (default 0); also
            settable later with ``set_delay``.
        connect_timeout: seconds to wait for the target when a client connects.

    Counters (read at any time): ``accepted`` links so far, ``refused`` links
    the target refused, ``links()`` open now.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        delay: float = 0.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.target = (target_host, int(target_port))
        self.delay = float(delay)
        self.connect_timeout = connect_timeout
        self.accepted = 0
        self.refused = 0
        self.port = 0
        self._links: list[_Link] = []
        self._stalled = False
        self._closing = False
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._commands: collections.deque[tuple[Callable[[], Any], list[Any], threading.Event]] = (
            collections.deque()
        )
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> TcpProxy:
        """Listen on a free loopback port and start forwarding."""
        if self._thread is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, 0))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name=f"tcpproxy:{self.port}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Reset every link, stop listening and end the thread. Safe to call twice."""
        if self._thread is None:
            return
        self._call(self._shutdown)
        self._thread.join(timeout=30)
        self._thread = None
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- faults --------------------------------------------------------------

    def cut(self, how: str = "rst", *, pg_client_port: int | None = None) -> int:
        """Drop every open link now, at both ends; the number of links dropped.

        how: "rst" sends a TCP reset each way (the peers see ECONNRESET);
            "fin" closes each way in order (the peers see end of file).
        pg_client_port: only the link PostgreSQL sees coming from this port
            (``pg_stat_activity.client_port`` of the backend): one connection.
        """
        if how not in ("rst", "fin"):
            raise ValueError(f"how must be 'rst' or 'fin', not {how!r}")
        return self._call(lambda: self._cut(how, pg_client_port))

    def stall(self, *, pg_client_port: int | None = None) -> int:
        """Black-hole links until ``resume()``; the number of links stalled.

        By default every link and every new connection; with ``pg_client_port``
        only that one link (see ``cut``), the others carry on.
        """
        return self._call(lambda: self._stall(pg_client_port))

    def resume(self) -> None:
        """Forward again after ``stall()`` (every stalled link, and new connections)."""
        self._call(self._resume)

    def pg_client_ports(self) -> list[int]:
        """The ``pg_stat_activity.client_port`` of every open link."""
        return self._call(lambda: [link.pg_client_port() for link in self._links])

    def set_delay(self, seconds: float) -> None:
        """Hold each chunk ``seconds`` in each direction from now on."""
        self.delay = float(seconds)

    @property
    def stalled(self) -> bool:
        return self._stalled

    def links(self) -> int:
        """How many links (client and server socket pairs) are open now."""
        return self._call(lambda: len(self._links))

    def wait_for_links(self, count: int, timeout: float = 30.0) -> int:
        """Poll until exactly ``count`` links are open; the count (fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.links()
            if now == count:
                return now
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"proxy on port {self.port}: {now} links open, "
                    f"expected {count} within {timeout:g} s"
                )
            time.sleep(0.01)

    # -- the loop thread -----------------------------------------------------

    def _call(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the loop thread and return its result."""
        if self._thread is None:
            raise RuntimeError("the proxy is not running: call start() first")
        if threading.current_thread() is self._thread:
            return function()
        done = threading.Event()
        outcome: list[Any] = []
        with self._lock:
            self._commands.append((function, outcome, done))
        self._wake()
        if not done.wait(timeout=30):
            raise TimeoutError(f"proxy on port {self.port} did not answer within 30 s")
        if outcome and isinstance(outcome[0], BaseException):
            raise outcome[0]
        return cast(T, outcome[0] if outcome else None)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already awake, or closing

    def _run_commands(self) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                function, outcome, done = self._commands.popleft()
            try:
                outcome.append(function())
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                outcome.append(error)
            done.set()

    def _run(self) -> None:
        try:
            while not self._closing:
                self._step()
        finally:
            self._shutdown()
            self._run_commands()  # nobody waits forever on a closed proxy

    def _step(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self._listener is not None and not self._stalled:
            poller.register(self._listener, select.POLLIN)
        now = time.monotonic()
        timeout: float | None = None
        if not self._closing:
            wanted: dict[int, int] = {}
            for link in self._links:
                if link.stalled:
                    continue
                for pipe in (link.up, link.down):
                    if not pipe.source_done and pipe.buffered < MAX_BUFFERED:
                        fd = pipe.source.fileno()
                        wanted[fd] = wanted.get(fd, 0) | select.POLLIN
                    if pipe.chunks:
                        due = pipe.chunks[0][0]
                        if due <= now:
                            fd = pipe.sink.fileno()
                            wanted[fd] = wanted.get(fd, 0) | select.POLLOUT
                        else:
                            timeout = due - now if timeout is None else min(timeout, due - now)
            for fd, events in wanted.items():
                poller.register(fd, events)
        ready = poller.poll(None if timeout is None else max(1, int(timeout * 1000 + 0.999)))
        for fd, _events in ready:
            if fd == self._wake_r.fileno():
                self._drain_wake()
            elif self._listener is not None and fd == self._listener.fileno():
                self._accept()
        self._run_commands()
        if self._closing:
            return
        for link in list(self._links):
            if link in self._links and not link.stalled:
                self._pump(link)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            client, _address = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self.accepted += 1
        try:
            server = socket.create_connection(self.target, timeout=self.connect_timeout)
        except OSError:
            self.refused += 1
            _reset(client)
            return
        for sock in (client, server):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(client, server)
        self._links.append(link)

    def _pump(self, link: _Link) -> None:
        """Move what can be moved on one link without blocking."""
        try:
            for pipe in (link.up, link.down):
                self._read(pipe)
                self._write(pipe)
        except OSError:
            # One end failed (reset, broken pipe): the other end learns it the same way.
            self._drop(link, "rst")
            return
        if link.up.finished() and link.down.finished():
            self._drop(link, "fin")

    def _read(self, pipe: _Pipe) -> None:
        if pipe.source_done or pipe.buffered >= MAX_BUFFERED:
            return
        try:
            data = pipe.source.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        due = time.monotonic() + self.delay
        if pipe.chunks:
            due = max(due, pipe.chunks[-1][0])  # never reorder when the delay changes
        pipe.chunks.append((due, data))  # b"" marks EOF, passed on in order
        pipe.buffered += len(data)
        if not data:
            pipe.source_done = True

    def _write(self, pipe: _Pipe) -> None:
        now = time.monotonic()
        while pipe.chunks and pipe.chunks[0][0] <= now:
            due, data = pipe.chunks[0]
            if not data:
                pipe.chunks.popleft()
                pipe.sink.shutdown(socket.SHUT_WR)
                pipe.sink_shut = True
                return
            try:
                sent = pipe.sink.send(data)
            except (BlockingIOError, InterruptedError):
                return
            pipe.buffered -= sent
            if sent < len(data):
                pipe.chunks[0] = (due, data[sent:])
                return
            pipe.chunks.popleft()

    def _drop(self, link: _Link, how: str) -> None:
        if link in self._links:
            self._links.remove(link)
        for sock in link.sockets():
            if how == "rst":
                _reset(sock)
            else:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def _matching(self, pg_client_port: int | None) -> list[_Link]:
        if pg_client_port is None:
            return list(self._links)
        return [link for link in self._links if link.pg_client_port() == pg_client_port]

    def _cut(self, how: str, pg_client_port: int | None) -> int:
        links = self._matching(pg_client_port)
        for link in links:
            self._drop(link, how)
        return len(links)

    def _stall(self, pg_client_port: int | None) -> int:
        links = self._matching(pg_client_port)
        if pg_client_port is None:
            self._stalled = True
            if self._listener is not None:
                _black_hole(self._listener, True)
        for link in links:
            link.stalled = True
            for sock in link.sockets():
                _black_hole(sock, True)
        return len(links)

    def _resume(self) -> None:
        for link in self._links:
            if link.stalled:
                for sock in link.sockets():
                    _black_hole(sock, False)
                link.stalled = False
        if self._listener is not None and self._stalled:
            _black_hole(self._listener, False)
        self._stalled = False

    def _shutdown(self) -> None:
        self._closing = True
        self._cut("rst", None)
        if self._listener is not None:
            self._listener.close()
            self._listener = None


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()
