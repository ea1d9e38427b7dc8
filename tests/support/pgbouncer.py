"""A real PgBouncer (Debian's package) in a temporary directory, for the tests and the benchmark.

Set up the way a server-side pooler such as Heroku's Connection Pooling is:
transaction mode, clients log in with scram-sha-256 over TLS, PgBouncer logs
in to PostgreSQL with scram-sha-256 over TLS with the server's certificate
verified (``server_tls_sslmode = verify-full`` against the PostgresServer's
CA). Every setting can be overridden (``settings``): the benchmark uses that
to run it as heroku-buildpack-pgbouncer configures it.

Everything lives in one temporary directory::

    pgbouncer.ini   the configuration (written on every start)
    users.txt       auth_file: the roles' passwords, and the admin console's
    tls/            the certificate PgBouncer shows its clients (self-signed,
                    names localhost and 127.0.0.1: ``sslrootcert`` for verify-full)
    pgbouncer.log   every line PgBouncer wrote, across restarts
    pgbouncer.pid   its pid, which the watchdog reads

What the tests look at:

- the admin console (``SHOW POOLS``, ``SHOW CLIENTS``, ``SHOW SERVERS``,
  ``SHOW STATS``): ``pools()``, ``clients()``, ``servers()``, ``stats()``
  return rows as dicts; ``client_connections()`` and ``server_connections()``
  count them for one database;
- the log: ``client_logins()`` counts "login attempt" lines (one per client
  connection PgBouncer accepted), ``server_logins()`` counts "new connection
  to server" lines (one per login PgBouncer made to PostgreSQL);
- ``restart()``: PgBouncer is stopped at once (SIGINT: every client and
  server connection is closed) and started again on the same port.

Run as root, PgBouncer (which refuses root) runs as the ``postgres`` system
user, which tests/support/postgres.py creates. It is stopped and its
directory removed by ``close()``, at interpreter exit, and, should the test
process be killed, by a small watchdog process that notices its parent is gone.

Typical use::

    bouncer = PgBouncer.for_server(pg, {"app": "app"}, {"app": pg.password_of("app")},
                                   default_pool_size=15).start()
    url = bouncer.url("app", "app", application_name="t1")   # a DATABASE_URL
    bouncer.pools("app")[0]["sv_active"]
    bouncer.close()
"""

from __future__ import annotations

import atexit
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from support.postgres import PostgresServer, free_port

OS_USER = "postgres"  # PgBouncer refuses to run as root; PostgresServer makes this user
ADMIN_USER = "pgbouncer_admin"
ADMIN_DATABASE = "pgbouncer"
INSTALL_HINT = "apt-get install -y pgbouncer"
START_TIMEOUT = 20.0

_CLIENT_LOGIN = re.compile(
    r" C-0x[0-9a-f]+: (?P<database>[^/\s]+)/(?P<user>\S+)@\S+ login attempt: "
)
_SERVER_LOGIN = re.compile(
    r" S-0x[0-9a-f]+: (?P<database>[^/\s]+)/(?P<user>\S+)@\S+ "
    r"new connection to server"
)

Setting = str | int | float | bool


class PgBouncerNotFound(RuntimeError):
    """No pgbouncer binary on this machine."""


class PgBouncerFailed(RuntimeError):
    """PgBouncer did not start or stop; the message ends with its log's tail."""


def find_binary() -> str:
    """pgbouncer on PATH, or where Debian's package puts it (/usr/sbin, not on every PATH)."""
    found = shutil.which("pgbouncer")
    if found is None and os.access("/usr/sbin/pgbouncer", os.X_OK):
        found = "/usr/sbin/pgbouncer"
    if found is None:
        raise PgBouncerNotFound(
            f"pgbouncer was not found on PATH nor in /usr/sbin. Install it with: {INSTALL_HINT} "
            "(or run: bash tests/setup_env.sh)"
        )
    return found


def version() -> str:
    """PgBouncer's version, e.g. "1.18.0"."""
    done = subprocess.run([find_binary(), "--version"], capture_output=True, text=True, timeout=30)
    match = re.search(r"PgBouncer (\S+)", done.stdout + done.stderr)
    return match.group(1) if match else "?"


def _os_user() -> pwd.struct_passwd | None:
    """The account PgBouncer runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        raise PgBouncerFailed(
            f"running as root, PgBouncer needs the system user {OS_USER!r}: start a "
            "PostgresServer first (it creates the user)"
        ) from None


def _render(value: Setting) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


# The watchdog is a separate process holding the read end of a pipe whose write
# end only the test process has. When the test process goes away, however it
# dies, the read returns EOF, and the watchdog stops PgBouncer (its pid file
# says which process, also after a restart) and removes the directory.
_WATCHDOG = """
import json, os, shutil, signal, sys, time
spec = json.loads(sys.argv[1])
sys.stdin.buffer.read()
try:
    pid = int(open(spec["pidfile"]).read().split()[0])
    os.kill(pid, signal.SIGINT)
    for _ in range(100):
        os.kill(pid, 0)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
except (OSError, ValueError, IndexError):
    pass
shutil.rmtree(spec["base_dir"], ignore_errors=True)
"""


class PgBouncer:
    """A PgBouncer in a temporary directory in front of one PostgreSQL server.

    Parameters:
        server_host, server_port: where PostgreSQL listens.
        databases: the databases clients may ask for: client-side name -> the
            server's database name.
        users: role -> password, for the auth_file (clients log in with these,
            and PgBouncer logs in to PostgreSQL with the same).
        pool_mode: "transaction" (the default, as Heroku's Connection Pooling),
            "session" or "statement".
        default_pool_size: server connections per database and user.
        reserve_pool_size: extra server connections under a wait (default 0,
            so that default_pool_size is the bound on the server's side).
        max_client_conn: client connections PgBouncer accepts in all.
        server_tls: server_tls_sslmode ("verify-full" by default, which needs
            ``server_ca_file``; "require"; "disable").
        server_ca_file: the CA that signed PostgreSQL's certificate.
        client_tls: clients must use TLS (client_tls_sslmode = require, with a
            certificate of its own), as Heroku's pooler requires; ``url()``
            asks for it (sslmode=require). False: plain TCP only.
        settings: more or different [pgbouncer] settings, last word over the above
            (a value of None removes a setting).
        port: a fixed port; by default a free one is picked at the first start
            and kept across restarts.
    """

    def __init__(
        self,
        *,
        server_host: str,
        server_port: int,
        databases: Mapping[str, str],
        users: Mapping[str, str],
        pool_mode: str = "transaction",
        default_pool_size: int = 20,
        reserve_pool_size: int = 0,
        max_client_conn: int = 200,
        server_tls: str = "verify-full",
        server_ca_file: str | os.PathLike[str] | None = None,
        client_tls: bool = True,
        settings: Mapping[str, Setting | None] | None = None,
        port: int | None = None,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if server_tls == "verify-full" and server_ca_file is None:
            raise ValueError("server_tls='verify-full' needs server_ca_file")
        self.binary = find_binary()
        self.openssl = shutil.which("openssl")
        self.host = "127.0.0.1"
        self.server_host = server_host
        self.server_port = server_port
        self.databases = dict(databases)
        self.users = dict(users)
        self.pool_mode = pool_mode
        self.default_pool_size = default_pool_size
        self.reserve_pool_size = reserve_pool_size
        self.max_client_conn = max_client_conn
        self.server_tls = server_tls
        self.server_ca_file = server_ca_file
        self.client_tls = client_tls
        self.settings = dict(settings or {})
        self.port = port
        self._fixed_port = port is not None
        self._parent_dir = base_dir
        self._os_user = _os_user()
        self._admin_password = secrets.token_urlsafe(18)
        self._lock = threading.RLock()
        self._admin: Any = None
        self._log_scanned = 0
        self._log_partial = b""
        self._client_logins: list[tuple[str, str]] = []
        self._server_logins: list[tuple[str, str]] = []
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.base_dir: Path | None = None
        self.starts = 0

    @classmethod
    def for_server(
        cls,
        server: PostgresServer,
        databases: Mapping[str, str],
        users: Mapping[str, str],
        **options: Any,
    ) -> PgBouncer:
        """A PgBouncer in front of a tests/support/postgres.py server, its CA trusted."""
        options.setdefault("server_ca_file", server.ca_cert_path)
        return cls(
            server_host=server.host,
            server_port=int(server.port or 0),
            databases=databases,
            users=users,
            **options,
        )

    # -- paths ---------------------------------------------------------------

    def _path(self, *parts: str) -> Path:
        if self.base_dir is None:
            raise RuntimeError("PgBouncer has not been started yet")
        return self.base_dir.joinpath(*parts)

    @property
    def log_path(self) -> Path:
        return self._path("pgbouncer.log")

    @property
    def ca_cert_path(self) -> Path:
        """PgBouncer's own certificate (self-signed): the ``sslrootcert`` for verify-full."""
        return self._path("tls", "pgbouncer.crt")

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> PgBouncer:
        """Write the configuration, start PgBouncer and wait until it accepts connections."""
        with self._lock:
            if self.running:
                return self
            if self.base_dir is None:
                self._create()
            for attempt in range(5):
                if self.port is None:
                    self.port = free_port(self.host)
                self._write(self._path("pgbouncer.ini"), self.config_text())
                self._write(self._path("users.txt"), self._auth_file())
                offset = self.log_path.stat().st_size
                self._spawn()
                try:
                    self._wait_ready(offset)
                except PgBouncerFailed as error:
                    self._reap()
                    taken = "Address already in use" in self._log_since(offset)
                    if taken and not self._fixed_port and self.starts == 0 and attempt < 4:
                        self.port = None  # someone took the port meanwhile: another one
                        continue
                    raise error
                self.starts += 1
                return self
            raise AssertionError("unreachable")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """Stop at once (SIGINT: PgBouncer closes every client and server connection)."""
        with self._lock:
            self._close_admin()
            process = self.process
            if process is None:
                return
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=timeout)
            self.process = None
            # Gone with the process: the watchdog must never signal a pid reused since.
            self._path("pgbouncer.pid").unlink(missing_ok=True)

    def restart(self) -> PgBouncer:
        """Stop PgBouncer (every connection through it is closed) and start it on the same port."""
        with self._lock:
            self.stop()
            return self.start()

    def close(self) -> None:
        """Stop PgBouncer and remove its directory; safe to call more than once."""
        with self._lock:
            self.stop()
            if self._watchdog is not None:
                watchdog, self._watchdog = self._watchdog, None
                if watchdog.stdin is not None:
                    watchdog.stdin.close()  # EOF: the watchdog removes the directory
                try:
                    watchdog.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    watchdog.kill()
            if self.base_dir is not None:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- configuration -------------------------------------------------------

    def config_text(self) -> str:
        """pgbouncer.ini as it is written on every start."""
        settings: dict[str, Setting | None] = {
            "listen_addr": self.host,
            "listen_port": self.port or 0,
            "unix_socket_dir": "",
            "pidfile": str(self._path("pgbouncer.pid")),
            "auth_type": "scram-sha-256",
            "auth_file": str(self._path("users.txt")),
            "admin_users": ADMIN_USER,
            "pool_mode": self.pool_mode,
            "default_pool_size": self.default_pool_size,
            "min_pool_size": 0,
            "reserve_pool_size": self.reserve_pool_size,
            "max_client_conn": self.max_client_conn,
            "server_tls_sslmode": self.server_tls,
            "server_tls_ca_file": str(self.server_ca_file) if self.server_ca_file else None,
            "log_connections": True,
            "log_disconnections": True,
            "log_pooler_errors": True,
            "stats_period": 60,
        }
        if self.client_tls:
            settings.update(
                client_tls_sslmode="require",
                client_tls_cert_file=str(self._path("tls", "pgbouncer.crt")),
                client_tls_key_file=str(self._path("tls", "pgbouncer.key")),
            )
        settings.update(self.settings)
        lines = ["; Written by tests/support/pgbouncer.py on every start.", "[pgbouncer]"]
        lines += [
            f"{name} = {_render(value)}" for name, value in settings.items() if value is not None
        ]
        lines += ["", "[databases]"]
        for client_name, server_name in self.databases.items():
            lines.append(
                f"{client_name} = host={self.server_host} port={self.server_port} "
                f"dbname={server_name}"
            )
        return "\n".join(lines) + "\n"

    def _auth_file(self) -> str:
        users = {**self.users, ADMIN_USER: self._admin_password}
        return "".join(
            '"{}" "{}"\n'.format(name.replace('"', '""'), password.replace('"', '""'))
            for name, password in users.items()
        )

    # -- what clients use ----------------------------------------------------

    def url(
        self,
        dbname: str,
        user: str,
        password: str | None = None,
        *,
        scheme: str = "postgres",
        **query: Any,
    ) -> str:
        """A ``postgres://user:password@127.0.0.1:port/dbname?query`` URL to PgBouncer.

        With client TLS on, ``sslmode`` defaults to require; other keyword
        arguments become query parameters (``application_name="t1"``).
        """
        if password is None:
            password = self.users[user]
        if self.client_tls:
            query.setdefault("sslmode", "require")
        url = (
            f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@"
            f"{self.host}:{self.port}/{quote(dbname, safe='')}"
        )
        if query:
            url += "?" + urlencode({key: str(value) for key, value in query.items()})
        return url

    def connect(self, dbname: str, user: str, **kwargs: Any) -> Any:
        """A psycopg (3) connection through PgBouncer (TLS if PgBouncer offers it)."""
        import psycopg

        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": dbname,
            "user": user,
            "password": self.users.get(user),
            "connect_timeout": 10,
            "sslmode": "require" if self.client_tls else "disable",
        }
        params.update(kwargs)
        return psycopg.connect(**params)

    # -- the admin console ---------------------------------------------------

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on the admin console: its rows as dicts (column -> value).

        One admin connection is kept open (reopened after a restart), so
        looking adds no login to the counts.
        """
        import psycopg

        if not re.fullmatch(r"[A-Za-z_]+", what):
            raise ValueError(f"not an admin console SHOW command: {what!r}")
        with self._lock:
            for attempt in (1, 2):
                if self._admin is None or self._admin.closed:
                    # The console speaks the simple query protocol only: never prepare.
                    self._admin = self.connect(
                        ADMIN_DATABASE,
                        ADMIN_USER,
                        password=self._admin_password,
                        autocommit=True,
                        prepare_threshold=None,
                    )
                try:
                    cursor = self._admin.execute(f"SHOW {what}")
                    names = [column.name for column in cursor.description or []]
                    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
                except psycopg.OperationalError:
                    if attempt == 2 or not (self._admin.closed or self._admin.broken):
                        raise
                    self._admin = None
            raise AssertionError("unreachable")

    def pools(self, database: str | None = None) -> list[dict[str, Any]]:
        """SHOW POOLS (cl_active, cl_waiting, sv_active, sv_idle, sv_used, ...), of one database."""
        return [
            row for row in self.show("POOLS") if database is None or row["database"] == database
        ]

    def clients(self, database: str | None = None) -> list[dict[str, Any]]:
        """SHOW CLIENTS: one row per client connection (the admin console's own left out)."""
        return [
            row
            for row in self.show("CLIENTS")
            if row["database"] != ADMIN_DATABASE
            and (database is None or row["database"] == database)
        ]

    def servers(self, database: str | None = None) -> list[dict[str, Any]]:
        """SHOW SERVERS: one row per connection PgBouncer holds to PostgreSQL."""
        return [
            row for row in self.show("SERVERS") if database is None or row["database"] == database
        ]

    def stats(self, database: str) -> dict[str, Any]:
        """SHOW STATS for one database (total_xact_count, total_query_count, ...)."""
        for row in self.show("STATS"):
            if row["database"] == database:
                return {
                    key: int(value) if key.startswith(("total_", "avg_")) else value
                    for key, value in row.items()
                }
        return {}

    def client_connections(self, database: str) -> int:
        """Client connections to ``database`` open right now."""
        return len(self.clients(database))

    def server_connections(self, database: str) -> int:
        """Server connections for ``database`` open right now (whatever their state)."""
        return len(self.servers(database))

    # -- the log -------------------------------------------------------------

    def client_logins(self, database: str | None = None, user: str | None = None) -> int:
        """Client connections PgBouncer accepted ("login attempt" lines), restarts included."""
        with self._lock:
            self._scan_log()
            return sum(
                1
                for log_database, log_user in self._client_logins
                if (database is None or log_database == database)
                and (user is None or log_user == user)
            )

    def server_logins(self, database: str | None = None) -> int:
        """Connections PgBouncer opened to PostgreSQL ("new connection to server" lines)."""
        with self._lock:
            self._scan_log()
            return sum(
                1
                for log_database, _user in self._server_logins
                if database is None or log_database == database
            )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.base_dir else ""

    # -- internals -----------------------------------------------------------

    def _create(self) -> None:
        parent = self._parent_dir or tempfile.gettempdir()
        base = Path(tempfile.mkdtemp(prefix="djpool-pgbouncer-", dir=parent))
        self.base_dir = base
        atexit.register(self.close)
        self._give(base, 0o755)
        (base / "tls").mkdir()
        self._give(base / "tls", 0o755)
        self._write(self.log_path, "", 0o644)
        if self.client_tls:
            self._make_certificate()
        self._start_watchdog()

    def _give(self, path: Path, mode: int) -> None:
        os.chmod(path, mode)
        if self._os_user is not None:
            os.chown(path, self._os_user.pw_uid, self._os_user.pw_gid)

    def _write(self, path: Path, text: str, mode: int = 0o600) -> None:
        path.write_text(text)
        self._give(path, mode)

    def _make_certificate(self) -> None:
        """A self-signed certificate for localhost and 127.0.0.1 (it is its own CA)."""
        if self.openssl is None:
            raise PgBouncerFailed(
                "openssl is needed for PgBouncer's certificate: apt-get install -y openssl"
            )
        tls = self._path("tls")
        (tls / "openssl.cnf").write_text(
            "[req]\n"
            "distinguished_name = dn\n"
            "prompt = no\n"
            "[dn]\n"
            "CN = localhost\n"
            "[cert]\n"
            "basicConstraints = critical, CA:TRUE\n"
            "keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign\n"
            "extendedKeyUsage = serverAuth\n"
            "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
            "subjectKeyIdentifier = hash\n"
        )
        command = [
            self.openssl,
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "pgbouncer.key",
            "-out",
            "pgbouncer.crt",
            "-days",
            "30",
            "-config",
            "openssl.cnf",
            "-extensions",
            "cert",
        ]
        done = subprocess.run(command, cwd=tls, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise PgBouncerFailed(f"openssl req failed:\n{done.stderr}")
        self._give(tls / "pgbouncer.key", 0o600)
        self._give(tls / "pgbouncer.crt", 0o644)

    def _spawn(self) -> None:
        # Popen switches user itself (no runuser in between), so the signals
        # stop() sends reach PgBouncer and nothing outlives it.
        as_user: dict[str, Any] = {}
        if self._os_user is not None:
            as_user = {
                "user": self._os_user.pw_uid,
                "group": self._os_user.pw_gid,
                "extra_groups": [],
            }
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        with open(self.log_path, "ab") as log:  # PgBouncer logs to stderr when not a daemon
            self.process = subprocess.Popen(
                [self.binary, str(self._path("pgbouncer.ini"))],
                cwd=self.base_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # not killed by the Ctrl-C meant for the test run
                **as_user,
            )

    def _wait_ready(self, offset: int) -> None:
        """Until PgBouncer logged "process up" and its port accepts a connection."""
        assert self.process is not None and self.port is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise PgBouncerFailed(
                    self._failure(f"exited with status {self.process.returncode}", offset)
                )
            if "process up" in self._log_since(offset):
                try:
                    with socket.create_connection((self.host, self.port), timeout=1):
                        return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise PgBouncerFailed(
                    self._failure(f"not accepting connections after {START_TIMEOUT:g} s", offset)
                )
            time.sleep(0.02)

    def _reap(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        self._path("pgbouncer.pid").unlink(missing_ok=True)

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def _failure(self, what: str, offset: int) -> str:
        tail = "\n".join(self._log_since(offset).splitlines()[-30:])
        return f"PgBouncer in {self.base_dir} on port {self.port}: {what}. Its log:\n{tail}"

    def _scan_log(self) -> None:
        with open(self.log_path, "rb") as log:
            log.seek(self._log_scanned)
            chunk = log.read()
        self._log_scanned += len(chunk)
        lines = (self._log_partial + chunk).split(b"\n")
        self._log_partial = lines.pop()
        for raw in lines:
            line = raw.decode(errors="replace")
            if match := _CLIENT_LOGIN.search(line):
                self._client_logins.append((match["database"], match["user"]))
            elif match := _SERVER_LOGIN.search(line):
                self._server_logins.append((match["database"], match["user"]))

    def _close_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                admin.close()
            except Exception:  # noqa: BLE001 - closing a dead connection may complain
                pass

    def _start_watchdog(self) -> None:
        spec = {"pidfile": str(self._path("pgbouncer.pid")), "base_dir": str(self.base_dir)}
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
