"""A TCP proxy on loopback that delays every chunk by RTT/2 in each direction.

It stands in for the network hop between a dyno and its database: the
benchmark points the app (or PgBouncer) at the proxy and the proxy at the
local PostgreSQL, so every round trip costs about RTT more. Bytes are passed
through untouched (TLS included), in order, without limiting bandwidth: a
chunk read at time t is written at t + RTT/2 whatever else is in flight.

    python bench/delayproxy.py --listen 127.0.0.1:6543 --target 127.0.0.1:5432 --rtt-ms 2

It prints ``ready PORT`` on stdout once it listens (``--listen 127.0.0.1:0``
picks a free port) and stops on SIGTERM/SIGINT or after ``--max-seconds``.

Why threads and not asyncio: an event loop's timers wake on whole
milliseconds (epoll's timeout unit), which turns a 0.5 ms one-way delay into
1 ms or more; ``time.sleep`` in a thread per direction keeps the added delay
within a few tens of microseconds of the asked one. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import signal
import socket
import sys
import threading
import time

CHUNK = 65536
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _pump(source: socket.socket, sink: socket.socket, delay: float) -> None:
    """Copy source to sink, each chunk leaving ``delay`` seconds after it arrived."""
    chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def write_side() -> None:
        try:
            while True:
                due, data = chunks.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write_side, daemon=True)
    writer.start()
    try:
        while data := source.recv(CHUNK):
            chunks.put((time.monotonic() + delay, data))
    except OSError:
        pass
    chunks.put((time.monotonic() + delay, b""))
    writer.join()


class DelayProxy:
    """Accept on a loopback port, connect each client to ``target``, delay both directions."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], rtt_ms: float) -> None:
        if listen[0] not in LOOPBACK:
            raise ValueError("delayproxy listens on loopback only")
        self.target = target
        self.one_way = max(rtt_ms, 0.0) / 2000.0
        self.server = socket.create_server(listen)
        self.port: int = self.server.getsockname()[1]
        self.connections = 0

    def _serve_one(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        _nodelay(client)
        _nodelay(upstream)
        back = threading.Thread(target=_pump, args=(upstream, client, self.one_way), daemon=True)
        back.start()
        _pump(client, upstream, self.one_way)
        back.join()
        client.close()
        upstream.close()

    def serve_forever(self) -> None:
        """Accept until the listening socket is closed."""
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve_one, args=(client,), daemon=True).start()

    def close(self) -> None:
        """Stop accepting; open connections end with the process."""
        self.server.close()


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str]) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--target", required=True)
    parser.add_argument("--rtt-ms", type=float, required=True)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=3600.0,
        help="stop by itself after this long (default 3600)",
    )
    args = parser.parse_args(argv)
    proxy = DelayProxy(_host_port(args.listen), _host_port(args.target), args.rtt_ms)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    print(f"ready {proxy.port}", flush=True)
    stop.wait(args.max_seconds)
    proxy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
