"""A throwaway PostgreSQL server set up like Heroku Postgres, for the tests.

Like Heroku Postgres it only takes TLS connections over TCP, authenticates
with scram-sha-256, and has a superuser ``postgres`` plus whatever roles the
tests create. Its certificate is signed by a private CA made for this server
(``ca_cert_path``), with the names ``localhost`` and ``127.0.0.1``, so a
client can use ``sslmode=verify-full``.

Everything lives in one temporary directory::

    data/           the cluster (initdb), with djpool.conf included from postgresql.conf
    tls/            ca.crt, ca.key, server.crt, server.key
    run/            the unix socket
    postgres.log    the server's log (log_connections and log_disconnections on)

Run as root, initdb and the server run as the ``postgres`` system user (made
with ``useradd --system`` if missing), since PostgreSQL refuses to run as
root.

Which PostgreSQL: this machine's newest (15 here) by default; with
DJPOOL_TEST_PG=17 (or ``PostgresServer(version="17")``), the server binaries
of the trixie root filesystem that tests/setup_chroots.sh builds, run inside
it (tests/support/chroot.sh: same /tmp, same pids, same network) as that
filesystem's ``postgres`` user. Heroku Postgres creates 17 today.

The server is stopped and the directory removed by ``close()``, at
interpreter exit, and, should the test process be killed, by a small
watchdog process that notices its parent is gone.

Typical use::

    server = PostgresServer().start()
    server.create_role("app", "secret", createdb=True)
    server.create_database("app", owner="app")
    url = server.url("app", user="app", sslmode="require", application_name="t1")
    server.backends(application_name="t1")
    server.close()
"""

from __future__ import annotations

import atexit
import glob
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode

from support import stacks
from support.procs import free_port

SUPERUSER = "postgres"
SERVER_OS_USER = "postgres"
ADMIN_APPLICATION_NAME = "djpool-tests-admin"
INSTALL_HINT = "apt-get install -y postgresql"
# PostgreSQL versions this machine lacks: version -> (chroot, its bin directory inside).
CHROOT_VERSIONS: dict[str, tuple[str, str]] = {"17": ("trixie", "/usr/lib/postgresql/17/bin")}
VERSION_VARIABLE = "DJPOOL_TEST_PG"

_AUTHORIZED = re.compile(
    r"connection authorized: user=(?P<user>\S+)(?: database=(?P<database>\S+))?"
    r"(?: application_name=(?P<application_name>\S+))?"
)


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries (initdb, pg_ctl, postgres) on this machine."""


class PostgresFailed(RuntimeError):
    """The server did not start or stop; the message ends with the log's tail."""


class Backend(NamedTuple):
    """One client backend, as pg_stat_activity shows it."""

    pid: int
    application_name: str
    datname: str | None
    usename: str | None
    state: str | None
    query: str


def find_bindir() -> Path:
    """The directory with initdb: pg_config's bindir, the newest /usr/lib/postgresql, PATH."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            bindir = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            bindir = ""
        if bindir and os.access(os.path.join(bindir, "initdb"), os.X_OK):
            return Path(bindir)
    debian = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if debian:
        newest = max(debian, key=lambda path: _version_key(Path(path).parent.parent.name))
        return Path(newest).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    raise PostgresNotFound(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found in "
        "`pg_config --bindir`, /usr/lib/postgresql/*/bin or PATH. "
        f"Install them with: {INSTALL_HINT} (or run: bash tests/setup_env.sh)"
    )


def requested_version(version: str | None = None) -> str | None:
    """The PostgreSQL to test against: ``version``, else DJPOOL_TEST_PG, else None (this machine's).

    A version this machine has in /usr/lib/postgresql, or one in CHROOT_VERSIONS.
    """
    if version is None:
        version = os.environ.get(VERSION_VARIABLE, "").strip() or None
    if version is None or version in CHROOT_VERSIONS:
        return version
    if os.access(f"/usr/lib/postgresql/{version}/bin/initdb", os.X_OK):
        return version
    raise PostgresNotFound(
        f"{VERSION_VARIABLE}={version!r}: no such PostgreSQL here; allowed: the versions in "
        f"/usr/lib/postgresql ({', '.join(_local_versions()) or 'none'}) or "
        f"{', '.join(CHROOT_VERSIONS)} (from bash tests/setup_chroots.sh)"
    )


def _local_versions() -> list[str]:
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    return sorted((Path(path).parent.parent.name for path in found), key=_version_key)


def _chroot_os_user(root: Path) -> pwd.struct_passwd:
    """The ``postgres`` account of a root filesystem (its own uid, not this machine's)."""
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == SERVER_OS_USER:
            return pwd.struct_passwd(
                (
                    fields[0],
                    fields[1],
                    int(fields[2]),
                    int(fields[3]),
                    fields[4],
                    fields[5],
                    fields[6],
                )
            )
    raise PostgresNotFound(
        f"{root} has no {SERVER_OS_USER} user: run `bash tests/setup_chroots.sh`"
    )


def application_name_for(nodeid: str, limit: int = 60) -> str:
    """A readable application_name from a test id, at most ``limit`` characters.

    ``tests/test_x.py::test_y[dj52-psycopg3]`` -> ``test_x.test_y.dj52-psycopg3``;
    longer names are cut and end with a hash of the whole id, so they stay unique.
    """
    name = re.sub(r"^tests/|\.py(?=::)", "", nodeid)
    name = re.sub(r"[^A-Za-z0-9_-]+", ".", name).strip(".")
    if len(name) > limit:
        digest = hashlib.sha1(nodeid.encode()).hexdigest()[:8]
        name = name[: limit - len(digest) - 1].rstrip(".") + "-" + digest
    return name


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


def _default_parent_dir(other_user: bool) -> str:
    """The system's temporary directory, or /tmp if it will not do for the server.

    The unix socket's path must stay short (about 100 bytes), and a server
    running as another user must be able to reach its directory.
    """
    default = tempfile.gettempdir()
    if len(default) > 60:
        return "/tmp"
    if other_user:
        path = Path(default)
        for directory in (path, *path.parents):
            if not directory.stat().st_mode & 0o001:
                return "/tmp"
    return default


def _server_os_user() -> pwd.struct_passwd | None:
    """The account the server runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        pass
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            SERVER_OS_USER,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # a concurrent useradd may have won: look again rather than trust the status
    try:
        return pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        raise PostgresFailed(
            f"running as root, PostgreSQL needs the system user {SERVER_OS_USER!r}, "
            f"and `useradd --system {SERVER_OS_USER}` did not create it"
        ) from None


# The watchdog is a separate process holding the read end of a pipe whose write
# end only the test process has. When the test process goes away, however it
# dies, the read returns EOF, and the watchdog stops the server and removes the
# directory if close() has not already done so.
_WATCHDOG = """
import json, os, shutil, subprocess, sys
spec = json.loads(sys.argv[1])
sys.stdin.buffer.read()
if os.path.exists(os.path.join(spec["data_dir"], "postmaster.pid")):
    subprocess.run(spec["stop"], cwd=spec["base_dir"], timeout=120,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
shutil.rmtree(spec["base_dir"], ignore_errors=True)
"""


class PostgresServer:
    """A PostgreSQL server in a temporary directory, TLS and scram-sha-256 only.

    Parameters:
        max_connections: the server's max_connections (default 100).
        port: a fixed TCP port; by default a free one is picked (and picked
            again if another process takes it before the server binds it).
        settings: more postgresql.conf settings, e.g. ``{"idle_session_timeout": "5s"}``.
        base_dir: where to make the temporary directory (default: the system's).
        version: the PostgreSQL major version (default: DJPOOL_TEST_PG, else this
            machine's newest); see requested_version().
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        port: int | None = None,
        settings: dict[str, Any] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        version: str | None = None,
    ) -> None:
        self.version = requested_version(version)
        # A chroot's PostgreSQL: its root filesystem, and bindir is the path inside.
        self._chroot_root: Path | None = None
        if self.version in CHROOT_VERSIONS:
            chroot, inside = CHROOT_VERSIONS[self.version]
            self._chroot_root = stacks.CHROOTS_DIR / chroot
            self.bindir = Path(inside)
            if not os.access(f"{self._chroot_root}{inside}/initdb", os.X_OK):
                raise PostgresNotFound(
                    f"PostgreSQL {self.version}: {self._chroot_root}{inside} "
                    f"is missing: {stacks.SETUP_CHROOTS_HINT}"
                )
        elif self.version is not None:
            self.bindir = Path(f"/usr/lib/postgresql/{self.version}/bin")
        else:
            self.bindir = find_bindir()
        self.openssl = shutil.which("openssl")
        if self.openssl is None:
            raise PostgresNotFound(
                "openssl is needed to make the server's certificates. "
                "Install it with: apt-get install -y openssl"
            )
        self.host = "127.0.0.1"
        self.port = port
        self.max_connections = max_connections
        self.settings = dict(settings or {})
        self._fixed_port = port is not None
        self._parent_dir = base_dir
        if self._chroot_root is not None and os.geteuid() == 0:
            self._os_user: pwd.struct_passwd | None = _chroot_os_user(self._chroot_root)
        else:
            self._os_user = _server_os_user()
        self._passwords = {SUPERUSER: secrets.token_urlsafe(24)}
        self._lock = threading.RLock()
        self._admin_connections: dict[str, Any] = {}
        self._log_offset = 0  # where the log stood when the server was last started
        self._log_scanned = 0
        self._log_partial = b""
        self._authorized: list[tuple[str | None, str | None, str | None]] = []
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.base_dir: Path | None = None
        self.running = False

    # -- paths ---------------------------------------------------------------

    def _path(self, *parts: str) -> Path:
        if self.base_dir is None:
            raise RuntimeError("the server has not been started yet")
        return self.base_dir.joinpath(*parts)

    @property
    def data_dir(self) -> Path:
        return self._path("data")

    @property
    def socket_dir(self) -> Path:
        return self._path("run")

    @property
    def log_path(self) -> Path:
        """The server's log: every line the server wrote, connections included."""
        return self._path("postgres.log")

    @property
    def ca_cert_path(self) -> Path:
        """The CA that signed the server's certificate: ``sslrootcert`` for verify-full."""
        return self._path("tls", "ca.crt")

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> PostgresServer:
        """Create the cluster on first use, start the server and wait until it is ready."""
        with self._lock:
            if self.running:
                return self
            if self.base_dir is None:
                self._create()
            for attempt in range(5):
                if self.port is None:
                    self.port = free_port(self.host)
                self._write_settings()
                self._log_offset = self.log_path.stat().st_size
                self._run_as_server(
                    [
                        self._bin("pg_ctl"),
                        "start",
                        "-D",
                        str(self.data_dir),
                        "-l",
                        str(self.log_path),
                        "-W",
                        "-s",
                    ]
                )
                self.running = True
                try:
                    self.wait_ready()
                except _PortTaken:
                    self.running = False
                    if self._fixed_port or attempt == 4:
                        raise
                    self.port = None
                    continue
                return self
            raise AssertionError("unreachable")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll until the server accepts connections; fail early if it died starting."""
        deadline = time.monotonic() + timeout
        command = self._in_chroot(
            [
                self._bin("pg_isready"),
                "-q",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-d",
                "postgres",
                "-t",
                "2",
            ]
        )
        while True:
            status = subprocess.run(command, env=self._env(), timeout=30).returncode
            if status == 0:
                return
            fresh = self._log_since_start()
            if "Address already in use" in fresh and "could not bind" in fresh:
                self._wait_postmaster_gone()
                raise _PortTaken(self._failure("port is taken"))
            if re.search(r"^\S.*\b(FATAL|PANIC):", fresh, re.MULTILINE) and not self._alive():
                self.running = False
                raise PostgresFailed(self._failure("the server did not start"))
            if time.monotonic() > deadline:
                raise PostgresFailed(self._failure(f"not ready after {timeout:.0f} s"))
            time.sleep(0.01)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (pg_ctl modes: "smart", "fast", "immediate") and wait for it."""
        with self._lock:
            self.close_admin_connections()
            if not self.running:
                return
            result = self._run_as_server(
                [
                    self._bin("pg_ctl"),
                    "stop",
                    "-D",
                    str(self.data_dir),
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    "60",
                    "-s",
                ],
                check=False,
            )
            if result.returncode != 0 and self._alive():
                raise PostgresFailed(
                    self._failure(f"pg_ctl stop -m {mode} failed: {result.stderr.strip()}")
                )
            self.running = False

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again on the same port; clients see their connections dropped."""
        with self._lock:
            self.stop(mode)
            self.start()

    def close(self) -> None:
        """Stop the server and remove its directory. Safe to call more than once."""
        with self._lock:
            try:
                if self.running:
                    try:
                        self.stop("fast")
                    except PostgresFailed:
                        self.stop("immediate")
            finally:
                if self.base_dir is not None:
                    shutil.rmtree(self.base_dir, ignore_errors=True)
                    self.base_dir = None
                if self._watchdog is not None:
                    self._watchdog.stdin.close()  # type: ignore[union-attr]
                    self._watchdog.wait(timeout=30)
                    self._watchdog = None
                atexit.unregister(self.close)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- roles, databases, URLs ----------------------------------------------

    def password_of(self, user: str) -> str:
        """The password of the superuser or of a role made with create_role()."""
        try:
            return self._passwords[user]
        except KeyError:
            raise KeyError(
                f"no password known for role {user!r}: create it with "
                "create_role() or pass password="
            ) from None

    def create_role(
        self,
        name: str,
        password: str,
        superuser: bool = False,
        login: bool = True,
        createdb: bool = False,
    ) -> None:
        """Create the role, or change it to these options if it exists."""
        from psycopg import sql

        options = sql.SQL(" ").join(
            sql.SQL(word)
            for word in (
                "LOGIN" if login else "NOLOGIN",
                "SUPERUSER" if superuser else "NOSUPERUSER",
                "CREATEDB" if createdb else "NOCREATEDB",
            )
        )
        exists = self.query("SELECT 1 FROM pg_roles WHERE rolname = %s", [name])
        verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
        self.query(
            sql.SQL("{} {} WITH {} PASSWORD {}").format(
                verb, sql.Identifier(name), options, sql.Literal(password)
            )
        )
        self._passwords[name] = password

    def create_database(self, name: str, owner: str = SUPERUSER) -> None:
        from psycopg import sql

        self.query(
            sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'").format(
                sql.Identifier(name), sql.Identifier(owner)
            )
        )

    def url(
        self,
        dbname: str = "app",
        user: str = "app",
        password: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        scheme: str = "postgres",
        **query: Any,
    ) -> str:
        """A Heroku-style ``postgres://user:password@host:port/dbname?query`` URL.

        The password defaults to the role's (see password_of). Keyword arguments
        become query parameters: ``url(sslmode="require", application_name="t1")``.
        """
        if password is None:
            password = self.password_of(user)
        netloc = (
            f"{quote(user, safe='')}:{quote(password, safe='')}@"
            f"{host or self.host}:{port or self.port}"
        )
        url = f"{scheme}://{netloc}/{quote(dbname, safe='')}"
        if query:
            url += "?" + urlencode({key: str(value) for key, value in query.items()})
        return url

    def connect(
        self, dbname: str = "app", user: str = "app", password: str | None = None, **kwargs: Any
    ) -> Any:
        """A psycopg (3) connection over TLS with the certificate verified (verify-full)."""
        import psycopg

        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": dbname,
            "user": user,
            "password": password if password is not None else self.password_of(user),
            "sslmode": "verify-full",
            "sslrootcert": str(self.ca_cert_path),
            "connect_timeout": 10,
        }
        params.update(kwargs)
        return psycopg.connect(**params)

    def admin(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        """A new superuser connection in autocommit; the caller closes it."""
        kwargs.setdefault("application_name", ADMIN_APPLICATION_NAME)
        return self.connect(dbname, SUPERUSER, autocommit=True, **kwargs)

    # -- looking at the server -----------------------------------------------

    def query(
        self,
        sql: Any,
        params: Sequence[Any] | dict[str, Any] | None = None,
        dbname: str = "postgres",
    ) -> list[tuple[Any, ...]]:
        """Run one statement as superuser in autocommit; its rows, or [] if it returns none.

        One admin connection per database is kept open (application_name
        ``djpool-tests-admin``) so looking does not add "connection authorized"
        lines to the log; it is reopened if it was terminated or the server restarted.
        """
        import psycopg

        with self._lock:
            for attempt in (1, 2):
                connection = self._admin_connections.get(dbname)
                if connection is None or connection.closed:
                    connection = self._admin_connections[dbname] = self.admin(dbname)
                try:
                    with connection.cursor() as cursor:
                        cursor.execute(sql, params)
                        return cursor.fetchall() if cursor.description else []
                except psycopg.OperationalError:
                    if attempt == 2 or not (connection.closed or connection.broken):
                        raise
                    self._admin_connections.pop(dbname, None)
            raise AssertionError("unreachable")

    def close_admin_connections(self) -> None:
        """Close query()'s kept connections (e.g. before dropping their database)."""
        with self._lock:
            for connection in self._admin_connections.values():
                try:
                    connection.close()
                except Exception:  # noqa: BLE001 - closing a dead connection may complain
                    pass
            self._admin_connections.clear()

    def backends(
        self, application_name: str | None = None, datname: str | None = None
    ) -> list[Backend]:
        """Client backends in pg_stat_activity, oldest first, query()'s own excluded."""
        rows = self.query(
            "SELECT pid, application_name, datname, usename, state, query"
            " FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " AND (%(app)s::text IS NULL OR application_name = %(app)s)"
            " AND (%(db)s::text IS NULL OR datname = %(db)s)"
            " ORDER BY backend_start, pid",
            {"app": application_name, "db": datname},
        )
        return [Backend(*row) for row in rows]

    def terminate_backends(
        self, application_name: str | None = None, datname: str | None = None
    ) -> list[int]:
        """pg_terminate_backend() every matching client backend; the pids terminated."""
        pids = [backend.pid for backend in self.backends(application_name, datname)]
        for pid in pids:
            self.query("SELECT pg_terminate_backend(%s)", [pid])
        return pids

    def connections_opened(
        self,
        application_name: str | None = None,
        user: str | None = None,
        database: str | None = None,
    ) -> int:
        """How many "connection authorized" lines the log has (optionally only matching ones).

        Counts every successful login since the server was created, restarts included.
        """
        with self._lock:
            self._scan_log()
            return sum(
                1
                for log_user, log_database, log_app in self._authorized
                if (user is None or log_user == user)
                and (database is None or log_database == database)
                and (application_name is None or log_app == application_name)
            )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    # -- internals -----------------------------------------------------------

    def _bin(self, name: str) -> str:
        candidate = self.bindir / name
        if self._chroot_root is not None:
            if not os.access(f"{self._chroot_root}{candidate}", os.X_OK):
                raise PostgresNotFound(
                    f"{name} is not in {self._chroot_root}{self.bindir}: "
                    f"{stacks.SETUP_CHROOTS_HINT}"
                )
            return str(candidate)
        if os.access(candidate, os.X_OK):
            return str(candidate)
        found = shutil.which(name)
        if found is None:
            raise PostgresNotFound(
                f"{name} is not in {self.bindir} nor on PATH; "
                f"install the server with: {INSTALL_HINT}"
            )
        return found

    def _env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_MESSAGES"] = "C"
        return env

    def _in_chroot(self, command: Sequence[str], userspec: str | None = None) -> list[str]:
        """``command`` run inside the chroot of a chroot's PostgreSQL (else as it is)."""
        if self._chroot_root is None:
            return list(command)
        return [
            "/bin/sh",
            str(stacks.CHROOT_SH),
            str(self._chroot_root),
            str(stacks.REPO),
            "/",
            *([f"--userspec={userspec}"] if userspec else []),
            *command,
        ]

    def _as_server(self, command: Sequence[str]) -> list[str]:
        if self._chroot_root is not None:
            user = self._os_user
            return self._in_chroot(
                command, None if user is None else f"{user.pw_uid}:{user.pw_gid}"
            )
        if self._os_user is None:
            return list(command)
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return [runuser, "-u", self._os_user.pw_name, "--", *command]

    def _run_as_server(
        self, command: Sequence[str], check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self._as_server(command),
            cwd=self.base_dir,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise PostgresFailed(
                f"{' '.join(command)} exited with status {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def _give_to_server(self, path: Path, mode: int) -> None:
        os.chmod(path, mode)
        if self._os_user is not None:
            os.chown(path, self._os_user.pw_uid, self._os_user.pw_gid)

    def _write(self, path: Path, text: str, mode: int = 0o600) -> None:
        path.write_text(text)
        self._give_to_server(path, mode)

    def _create(self) -> None:
        parent = self._parent_dir or _default_parent_dir(self._os_user is not None)
        base = Path(tempfile.mkdtemp(prefix="djpool-pg-", dir=parent))
        self.base_dir = base
        atexit.register(self.close)
        self._give_to_server(base, 0o755)
        for name in ("run", "tls"):
            (base / name).mkdir()
            self._give_to_server(base / name, 0o755)
        self._write(self.log_path, "", 0o644)
        self._make_certificates()
        pwfile = base / "superuser.pw"
        self._write(pwfile, self._passwords[SUPERUSER] + "\n")
        try:
            self._run_as_server(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--no-sync",
                    "--no-instructions",
                ]
            )
        finally:
            pwfile.unlink()
        self._write(
            self.data_dir / "pg_hba.conf",
            (
                "# TYPE     DATABASE  USER  ADDRESS       METHOD\n"
                "local      all       all                 scram-sha-256\n"
                "hostssl    all       all   127.0.0.1/32  scram-sha-256\n"
                "hostnossl  all       all   0.0.0.0/0     reject\n"
            ),
        )
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# djpool tests: everything else is in djpool.conf\ninclude = 'djpool.conf'\n"
            )
        self._start_watchdog()

    def _make_certificates(self) -> None:
        tls = self._path("tls")
        (tls / "openssl.cnf").write_text(
            "[req]\n"
            "distinguished_name = dn\n"
            "prompt = no\n"
            "[dn]\n"
            "CN = unused\n"
            "[ca]\n"
            "basicConstraints = critical, CA:TRUE\n"
            "keyUsage = critical, keyCertSign, cRLSign\n"
            "subjectKeyIdentifier = hash\n"
            "[server]\n"
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature, keyEncipherment\n"
            "extendedKeyUsage = serverAuth\n"
            "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
            "subjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid, issuer\n"
        )
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for command in (
            [
                "req",
                "-x509",
                "-new",
                *key,
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "30",
                "-subj",
                "/CN=djpool tests CA",
                "-config",
                "openssl.cnf",
                "-extensions",
                "ca",
            ],
            [
                "req",
                "-new",
                *key,
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
                "-config",
                "openssl.cnf",
            ],
            [
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                str(secrets.randbits(63)),
                "-days",
                "30",
                "-out",
                "server.crt",
                "-extfile",
                "openssl.cnf",
                "-extensions",
                "server",
            ],
        ):
            result = subprocess.run(
                [self.openssl, *command], cwd=tls, capture_output=True, text=True, timeout=60
            )
            if result.returncode != 0:
                raise PostgresFailed(f"openssl {' '.join(command)} failed:\n{result.stderr}")
        for name, mode in (("server.key", 0o600), ("server.crt", 0o644), ("ca.crt", 0o644)):
            self._give_to_server(tls / name, mode)

    def _write_settings(self) -> None:
        settings: dict[str, Any] = {
            "listen_addresses": self.host,
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": self.max_connections,
            "ssl": True,
            "ssl_cert_file": str(self._path("tls", "server.crt")),
            "ssl_key_file": str(self._path("tls", "server.key")),
            "password_encryption": "scram-sha-256",
            "log_connections": True,
            "log_disconnections": True,
            "logging_collector": False,
            "log_line_prefix": "%m [%p] %q%u@%d app=%a ",
            "fsync": False,
            "synchronous_commit": False,
            "full_page_writes": False,
            **self.settings,
        }
        lines = ["# Written by tests/support/postgres.py on every start."]
        for name, value in settings.items():
            if isinstance(value, bool):
                rendered = "on" if value else "off"
            elif isinstance(value, int | float):
                rendered = str(value)
            else:
                rendered = "'" + str(value).replace("'", "''") + "'"
            lines.append(f"{name} = {rendered}")
        self._write(self.data_dir / "djpool.conf", "\n".join(lines) + "\n")

    def _start_watchdog(self) -> None:
        spec = {
            "data_dir": str(self.data_dir),
            "base_dir": str(self.base_dir),
            "stop": self._as_server(
                [
                    self._bin("pg_ctl"),
                    "stop",
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "60",
                    "-s",
                ]
            ),
        }
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not killed by the Ctrl-C meant for the test run
        )

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def _alive(self) -> bool:
        pid = self._postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _wait_postmaster_gone(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self._alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    def _log_since_start(self) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def _failure(self, what: str) -> str:
        tail = "\n".join(self._log_since_start().splitlines()[-30:])
        return f"PostgreSQL in {self.base_dir} on port {self.port}: {what}. Its log:\n{tail}"

    def _scan_log(self) -> None:
        with open(self.log_path, "rb") as log:
            log.seek(self._log_scanned)
            chunk = log.read()
        self._log_scanned += len(chunk)
        lines = (self._log_partial + chunk).split(b"\n")
        self._log_partial = lines.pop()
        for raw in lines:
            match = _AUTHORIZED.search(raw.decode(errors="replace"))
            if match:
                self._authorized.append(
                    (match["user"], match["database"], match["application_name"])
                )


class _PortTaken(PostgresFailed):
    pass
