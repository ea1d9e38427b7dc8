"""Environment -> one immutable configuration object, validated once.

This is the only module that reads configuration from the environment
(the shim hands it ``os.environ``; the build hands it the ENV_DIR values).
Everything else receives a :class:`Config` or :class:`PoolSettings`
(immutable NamedTuples: cheaper to import at every interpreter start than
dataclasses).

Standard library only: the build step validates POOL_* with it before any
dependency is installed, and the shim imports it at interpreter start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple, TypeVar
from urllib.parse import urlsplit

from djpool import words

POSTGRES_ENGINES = (
    "django.db.backends.postgresql",
    "django.contrib.gis.db.backends.postgis",
)
# What Heroku's `pg:connection-pooling:attach DATABASE_URL --as DATABASE_CONNECTION_POOL` sets.
POOLER_URL_VARIABLE = "DATABASE_CONNECTION_POOL_URL"
POOLER_VARIABLE = "POOL_TRANSACTION_POOLER"
DEFAULT_PORT = "5432"  # libpq's, when a URL or the settings name none


class ConfigError(ValueError):
    """A variable holds a value djpool cannot use; ``str()`` is the one line to show."""

    def __init__(self, variable: str, shown_value: str, allowed: str) -> None:
        self.variable = variable
        self.shown_value = shown_value
        self.allowed = allowed
        super().__init__(f"{variable}={shown_value} is not valid: {allowed}")


class PoolSettings(NamedTuple):
    """Sizes and timings of every pool in the process.

    size: connections each pool keeps open (POOL_SIZE, default 5).
    max_overflow: extra connections allowed under a burst, closed on checkin
        (POOL_MAX_OVERFLOW, default 0, so the server never sees more than
        ``size`` per process and alias).
    timeout: seconds a checkout waits for a free connection before failing
        (POOL_TIMEOUT, default 10): a full pool must fail loudly, not hang.
    recycle: seconds after which a connection is replaced at checkout
        (POOL_RECYCLE, default 3600; 0 never recycles), bounding server-side
        memory growth and the life of an orphaned connection.
    """

    size: int = 5
    max_overflow: int = 0
    timeout: float = 10.0
    recycle: int = 3600

    def describe(self) -> str:
        """The settings as the variables a user would type."""
        return (
            f"POOL_SIZE={self.size} POOL_MAX_OVERFLOW={self.max_overflow} "
            f"POOL_TIMEOUT={self.timeout:g}s POOL_RECYCLE={self.recycle}s"
        )


class DatabaseTarget(NamedTuple):
    """Where DATABASE_URL points, without the password."""

    name: str
    host: str
    port: str
    user: str

    def describe(self) -> str:
        """One short phrase for the start-up line."""
        where = self.host or "local socket"
        if self.port:
            where = f"{where}:{self.port}"
        user = f" as {self.user!r}" if self.user else ""
        return f"database {self.name!r} on {where}{user}"


class MetricsSettings(NamedTuple):
    """What the pool reports about itself (djpool.metrics).

    interval: seconds between the l2met lines of each pool
        (POOL_METRICS_INTERVAL, default 60; 0 turns them off).
    dyno: the dyno's name (DYNO, e.g. ``web.1``), the lines' ``source``;
        None outside Heroku, where the process id stands in.
    """

    interval: int = 60
    dyno: str | None = None


class TransactionPooler(NamedTuple):
    """Which database aliases connect through a transaction pooler (PgBouncer in transaction mode).

    forced: POOL_TRANSACTION_POOLER as a boolean: True for every alias, False
        for none; None (unset) to recognise the pooler by its address.
    host, port: where DATABASE_CONNECTION_POOL_URL points (Heroku's Connection
        Pooling); empty when it is not set. An alias whose settings connect
        there is behind the pooler.
    """

    forced: bool | None = None
    host: str = ""
    port: str = ""

    def covers(self, host: object, port: object) -> bool:
        """Whether an alias connecting to ``host``:``port`` (its HOST and PORT) is behind it."""
        if self.forced is not None:
            return self.forced
        if not self.host:
            return False
        return (str(host or "").lower(), str(port or DEFAULT_PORT)) == (self.host, self.port)

    def describe(self) -> str:
        """The part of the start-up line that says which aliases are treated so; may be empty."""
        if self.forced:
            return f"transaction pooler: every alias ({POOLER_VARIABLE}=1)"
        if self.forced is None and self.host:
            return f"transaction pooler: aliases on {self.host}:{self.port} ({POOLER_URL_VARIABLE})"
        return ""


class Config(NamedTuple):
    """What the shim needs to decide and to build pools."""

    pool: PoolSettings
    database: DatabaseTarget
    metrics: MetricsSettings = MetricsSettings()
    pooler: TransactionPooler = TransactionPooler()


Number = TypeVar("Number", int, float)


def _number(
    environ: Mapping[str, str],
    variable: str,
    default: Number,
    parse: Callable[[str], Number],
    fits: Callable[[Number], bool],
    allowed: str,
) -> Number:
    """The variable parsed by ``parse`` and checked by ``fits``; unset or blank gives default."""
    raw = environ.get(variable)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = parse(raw.strip())
    except ValueError:
        raise ConfigError(variable, repr(raw), allowed) from None
    if not fits(value):
        raise ConfigError(variable, repr(raw), allowed)
    return value


def _whole_number(
    environ: Mapping[str, str], variable: str, default: int, low: int, high: int
) -> int:
    return _number(
        environ,
        variable,
        default,
        int,
        lambda value: low <= value <= high,
        f"expected a whole number from {low} to {high}",
    )


def _seconds(
    environ: Mapping[str, str], variable: str, default: float, low: float, high: float
) -> float:
    return _number(
        environ,
        variable,
        default,
        float,
        lambda value: low < value <= high,  # also rejects nan
        f"expected a number of seconds greater than {low:g} and at most {high:g}",
    )


def is_disabled(environ: Mapping[str, str]) -> bool:
    """POOL_DISABLED as a boolean; a value that is neither is an error."""
    raw = environ.get("POOL_DISABLED", "")
    disabled = words.truth(raw)
    if disabled is None:
        raise ConfigError("POOL_DISABLED", repr(raw), words.ALLOWED)
    return disabled


def pooler_forced(environ: Mapping[str, str]) -> bool | None:
    """POOL_TRANSACTION_POOLER as a boolean, None when unset or blank (recognise by address)."""
    raw = environ.get(POOLER_VARIABLE)
    if raw is None or raw.strip() == "":
        return None
    forced = words.truth(raw)
    if forced is None:
        raise ConfigError(POOLER_VARIABLE, repr(raw), words.ALLOWED)
    return forced


def transaction_pooler(environ: Mapping[str, str]) -> TransactionPooler:
    """POOL_TRANSACTION_POOLER and the address of DATABASE_CONNECTION_POOL_URL, checked."""
    forced = pooler_forced(environ)
    url = environ.get(POOLER_URL_VARIABLE, "").strip()
    if not url:
        return TransactionPooler(forced)
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        host, port = "", None
    if not host:
        raise ConfigError(
            POOLER_URL_VARIABLE,
            redact_url(url),
            "expected postgres://USER:PASSWORD@HOST:PORT/DBNAME",
        )
    return TransactionPooler(forced, host.lower(), str(port or DEFAULT_PORT))


def pool_settings(environ: Mapping[str, str]) -> PoolSettings:
    """Read and check every POOL_* sizing variable; raise ConfigError on the first bad one."""
    default = PoolSettings()
    return PoolSettings(
        size=_whole_number(environ, "POOL_SIZE", default.size, 1, 1000),
        max_overflow=_whole_number(environ, "POOL_MAX_OVERFLOW", default.max_overflow, 0, 1000),
        timeout=_seconds(environ, "POOL_TIMEOUT", default.timeout, 0, 3600),
        recycle=_whole_number(environ, "POOL_RECYCLE", default.recycle, 0, 31_536_000),
    )


def metrics_settings(environ: Mapping[str, str]) -> MetricsSettings:
    """POOL_METRICS_INTERVAL, checked like the sizes, and DYNO; ConfigError if bad."""
    default = MetricsSettings()
    dyno = environ.get("DYNO", "").strip()
    return MetricsSettings(
        interval=_whole_number(environ, "POOL_METRICS_INTERVAL", default.interval, 0, 86_400),
        dyno=dyno or None,
    )


def redact_url(url: str) -> str:
    """DATABASE_URL safe to print: the password is never shown."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"<{len(url)} characters, not shown>"
    if not parts.scheme or "://" not in url:
        return f"<{len(url)} characters, not shown>"
    user = parts.username or ""
    auth = f"{user}:***@" if parts.password is not None else (f"{user}@" if user else "")
    return f"'{parts.scheme}://{auth}{host}{port}{parts.path}'"


def database_target(url: str) -> DatabaseTarget:
    """Parse DATABASE_URL the way the app's settings do (dj-database-url) and check it."""
    allowed = "expected postgres://USER:PASSWORD@HOST:PORT/DBNAME"
    shown = redact_url(url)
    import dj_database_url  # imported here: only needed once a URL is there to check

    try:
        parsed = dj_database_url.parse(url)
    except (ValueError, KeyError):
        raise ConfigError("DATABASE_URL", shown, allowed) from None
    if parsed.get("ENGINE") not in POSTGRES_ENGINES:
        raise ConfigError("DATABASE_URL", shown, f"not a PostgreSQL URL; {allowed}")
    if not parsed.get("NAME"):
        raise ConfigError("DATABASE_URL", shown, f"no database name; {allowed}")
    return DatabaseTarget(
        name=str(parsed.get("NAME", "")),
        host=str(parsed.get("HOST", "")),
        port=str(parsed.get("PORT", "")),
        user=str(parsed.get("USER", "")),
    )


def load(environ: Mapping[str, str]) -> Config | None:
    """The whole configuration, or None when pooling is off (no DATABASE_URL, POOL_DISABLED).

    Raises ConfigError naming the first variable that is wrong.
    """
    url = environ.get("DATABASE_URL", "")
    if not url.strip() or is_disabled(environ):
        return None
    settings = pool_settings(environ)
    metrics = metrics_settings(environ)
    pooler = transaction_pooler(environ)
    return Config(
        pool=settings, database=database_target(url.strip()), metrics=metrics, pooler=pooler
    )
