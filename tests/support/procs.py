"""Processes, ports and sockets as the kernel shows them: /proc, process groups, free ports.

Tests ask the kernel rather than the program under test: which processes a
gunicorn master forked, which worker holds the TCP socket PostgreSQL sees a
connection come from, whether anything of a process group is left. Standard
library only, so that tests/support/heroku.py (also run as a script) can use it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import NamedTuple

TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now.

    Someone may take it before the caller binds it: a server started on it
    must retry on another port if it is taken meanwhile.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class ProcessInfo(NamedTuple):
    """One line of the process table: the ids the tests need, and the state."""

    pid: int
    ppid: int
    pgrp: int
    state: str  # "R", "S", ...; "Z" for a zombie: ended, not yet reaped

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")


def processes() -> list[ProcessInfo]:
    """(pid, ppid, process group, state) of every process, from /proc/<pid>/stat."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        # The command name may hold spaces and parentheses: split after the last ")".
        fields = stat[stat.rindex(")") + 2 :].split()
        found.append(ProcessInfo(int(entry), int(fields[1]), int(fields[2]), fields[0]))
    return found


def children_of(pid: int) -> list[int]:
    """The live pids whose parent is ``pid`` (e.g. gunicorn's workers), sorted."""
    return sorted(p.pid for p in processes() if p.ppid == pid and p.alive)


def group_members(pgid: int) -> list[int]:
    """The live pids in process group ``pgid``: what a killpg would still have to end.

    Zombies are left out: they have ended, and where nothing reaps orphans
    (a container whose pid 1 does not) they stay in the table.
    """
    return sorted(p.pid for p in processes() if p.pgrp == pgid and p.alive)


def stop_group(
    process: subprocess.Popen[bytes],
    timeout: float = 30.0,
    *,
    term_whole_group: bool = False,
    kill_timeout: float = 30.0,
) -> int:
    """SIGTERM a process that leads its own group, wait, then SIGKILL what is left of the group.

    The leader gets SIGTERM (with ``term_whole_group``, every process of the
    group does, as Heroku signals every process of a dyno) and ``timeout``
    seconds to end; gunicorn stops its workers meanwhile. A leader that would
    not stop, or children it left behind, are killed with SIGKILL, so no test
    leaves a worker running. The process must have been started with
    ``start_new_session=True``. Returns its exit status.
    """
    if process.poll() is None:
        try:
            if term_whole_group:
                os.killpg(process.pid, signal.SIGTERM)
            else:
                process.send_signal(signal.SIGTERM)
            process.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    if process.poll() is None or group_members(process.pid):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return process.wait(timeout=kill_timeout)


def socket_inodes(pid: int) -> set[str]:
    """The inode numbers of the sockets process ``pid`` has open (from /proc/<pid>/fd)."""
    inodes: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or not ours to read
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target.endswith("]"):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def tcp_sockets() -> list[tuple[int, str]]:
    """(local port, inode) of every TCP socket of this network namespace, IPv4 and IPv6."""
    found = []
    for table in TCP_TABLES:
        try:
            lines = Path(table).read_text().splitlines()[1:]  # the first line is a header
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # fields[1] is local_address "HEXIP:HEXPORT", fields[9] the inode.
            found.append((int(fields[1].rsplit(":", 1)[1], 16), fields[9]))
    return found


def local_tcp_ports(pid: int) -> set[int]:
    """The local ports of process ``pid``'s TCP sockets.

    For a client socket to PostgreSQL this is the server's
    ``pg_stat_activity.client_port``: it ties a backend to the worker holding it.
    """
    inodes = socket_inodes(pid)
    return {port for port, inode in tcp_sockets() if inode in inodes}


def tcp_port_owner(pids: list[int], port: int) -> int | None:
    """Which of ``pids`` holds the TCP socket whose local port is ``port``; None if none."""
    inodes = {inode for local, inode in tcp_sockets() if local == port}
    for pid in pids:
        if socket_inodes(pid) & inodes:
            return pid
    return None
