"""``python -m djpool doctor``: does the app's connection budget fit the database server?

Why: every process holds up to POOL_SIZE + POOL_MAX_OVERFLOW server connections,
so scaling dynos multiplies them, and Heroku Postgres plans have a fixed
``max_connections``. Run as ``heroku run python -m djpool doctor --dynos 4``,
it connects once the way the app does (through Django's settings when
DJANGO_SETTINGS_MODULE is set, with the same TLS options; otherwise from
DATABASE_URL), reads the server's limits and says whether the formation fits,
how many dynos would, and what to change when it does not. Behind a
transaction pooler (config.TransactionPooler) the formation's connections are
the pooler's clients: it says so, and which limits still apply.

Exit status: 0 fits, 1 does not fit, 2 cannot tell (no connection, or a bad
setting; the line says which, never the password). Importable without Django
and without a driver: both are imported only when it connects.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TextIO

from djpool import config

FITS, DOES_NOT_FIT, CANNOT_TELL = 0, 1, 2
STEP = "-----> "
DETAIL = "       "
ERROR = " !     "
APPLICATION_NAME = "djpool-doctor"
CONNECT_TIMEOUT_SECONDS = 10
CONNECTION_POOLING = (
    "heroku pg:connection-pooling:attach DATABASE_URL --as DATABASE_CONNECTION_POOL"
)


class CannotTell(Exception):
    """No verdict: ``str()`` is the one line to show (it never holds a password)."""


# -- the arithmetic --------------------------------------------------------------------------


class Formation(NamedTuple):
    """The processes that hold pools, and what each may open."""

    per_process: int  # POOL_SIZE + POOL_MAX_OVERFLOW
    web_dynos: int = 1
    web_concurrency: int = 1  # WEB_CONCURRENCY: gunicorn workers per web dyno
    worker_dynos: int = 0
    worker_concurrency: int = 1  # processes per worker dyno (e.g. Celery's --concurrency)

    @property
    def per_web_dyno(self) -> int:
        return self.web_concurrency * self.per_process

    @property
    def workers_total(self) -> int:
        return self.worker_dynos * self.worker_concurrency * self.per_process

    @property
    def processes(self) -> int:
        return self.web_dynos * self.web_concurrency + self.worker_dynos * self.worker_concurrency

    @property
    def total(self) -> int:
        return self.web_dynos * self.per_web_dyno + self.workers_total


class Verdict(NamedTuple):
    """What the server allows against what the formation may open."""

    fits: bool
    needed: int
    limit: int
    web_dynos_that_fit: int  # with these settings and these worker dynos
    per_process_that_fits: int  # POOL_SIZE + POOL_MAX_OVERFLOW for this formation
    pool_size_that_fits: int  # POOL_SIZE for it with this POOL_MAX_OVERFLOW (< 1: none)


def judge(formation: Formation, limit: int, max_overflow: int) -> Verdict:
    """Fit ``formation`` into ``limit`` connections; the dynos and POOL_SIZE that would fit."""
    room_for_web = limit - formation.workers_total
    web_dynos = max(0, room_for_web // formation.per_web_dyno) if formation.per_web_dyno else 0
    per_process = limit // formation.processes if formation.processes else limit
    return Verdict(
        fits=formation.total <= limit,
        needed=formation.total,
        limit=limit,
        web_dynos_that_fit=web_dynos,
        per_process_that_fits=per_process,
        pool_size_that_fits=per_process - max_overflow,
    )


class ServerFacts(NamedTuple):
    """What the server says about its limits and who is connected."""

    version: str
    max_connections: int
    superuser_reserved: int
    reserved: int | None  # reserved_connections (PostgreSQL 16+), None before
    role: str
    superuser: bool
    role_limit: int  # rolconnlimit, -1 for none
    database_limit: int  # datconnlimit, -1 for none
    tls: str | None  # the TLS version of this connection, None without TLS
    in_use: list[tuple[str, int]]  # (application_name, connections) besides this one

    @property
    def limit(self) -> int:
        """Connections the app's role may open: max_connections less the reserved slots."""
        limit = self.max_connections
        if not self.superuser:
            limit -= self.superuser_reserved + (self.reserved or 0)
        for other in (self.role_limit, self.database_limit):
            if other >= 0:
                limit = min(limit, other)
        return max(0, limit)


FACTS_SQL = """
SELECT current_setting('server_version'),
       current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       current_setting('reserved_connections', true),
       current_user,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
       (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user),
       (SELECT datconnlimit FROM pg_database WHERE datname = current_database()),
       (SELECT CASE WHEN ssl THEN version END FROM pg_stat_ssl WHERE pid = pg_backend_pid())
"""
IN_USE_SQL = """
SELECT coalesce(nullif(application_name, ''), '(none)'), count(*)
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
GROUP BY 1 ORDER BY 2 DESC, 1
"""


def read_facts(run: Callable[[str], list[tuple[Any, ...]]]) -> ServerFacts:
    """The facts, from ``run(sql) -> rows`` on the app's connection."""
    row = run(FACTS_SQL)[0]
    reserved = row[3]
    return ServerFacts(
        version=str(row[0]),
        max_connections=int(row[1]),
        superuser_reserved=int(row[2]),
        reserved=int(reserved) if reserved not in (None, "") else None,
        role=str(row[4]),
        superuser=bool(row[5]),
        role_limit=int(row[6]) if row[6] is not None else -1,
        database_limit=int(row[7]) if row[7] is not None else -1,
        tls=str(row[8]) if row[8] else None,
        in_use=[(str(name), int(count)) for name, count in run(IN_USE_SQL)],
    )


# -- connecting the way the app does ----------------------------------------------------------


class Target(NamedTuple):
    """How the doctor connects, for the report (no password)."""

    how: str  # "Django's settings (...)" or "DATABASE_URL"
    where: config.DatabaseTarget


def through_django(environ: Mapping[str, str], alias: str) -> tuple[Target, Any]:
    """Django's connection for ``alias``, set up from DJANGO_SETTINGS_MODULE (not yet opened)."""
    try:
        import django
        from django.db import connections

        django.setup()
        connection = connections[alias]
    except Exception as error:  # noqa: BLE001 - the settings' own error, named
        raise CannotTell(
            f"cannot load the Django settings (DJANGO_SETTINGS_MODULE="
            f"{environ.get('DJANGO_SETTINGS_MODULE')}): {_first_line(error)}"
        ) from None
    settings = connection.settings_dict
    if connection.vendor != "postgresql":
        raise CannotTell(f"database alias {alias!r} is not PostgreSQL ({settings.get('ENGINE')})")
    where = config.DatabaseTarget(
        name=str(settings.get("NAME") or ""),
        host=str(settings.get("HOST") or ""),
        port=str(settings.get("PORT") or ""),
        user=str(settings.get("USER") or ""),
    )
    how = f"Django's settings (DJANGO_SETTINGS_MODULE={environ.get('DJANGO_SETTINGS_MODULE')}, "
    return Target(how + f"alias {alias!r})", where), connection


def query_django(connection: Any, secrets: Sequence[str]) -> ServerFacts:
    """The facts over Django's connection, closed (given back to the pool) afterwards."""

    def run(sql: str) -> list[tuple[Any, ...]]:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return list(cursor.fetchall())

    try:
        return read_facts(run)
    except Exception as error:  # noqa: BLE001 - the driver's words, password removed
        raise CannotTell(_cannot_connect(error, secrets)) from None
    finally:
        try:
            connection.close()
        except Exception:  # noqa: BLE001 - nothing more to report
            pass


def url_params(url: str) -> dict[str, Any]:
    """libpq parameters from DATABASE_URL as Django builds them (OPTIONS carry sslmode etc.)."""
    import dj_database_url

    parsed = dj_database_url.parse(url)
    params: dict[str, Any] = {
        "dbname": parsed.get("NAME") or "",
        "user": parsed.get("USER") or None,
        "password": parsed.get("PASSWORD") or None,
        "host": parsed.get("HOST") or None,
        "port": parsed.get("PORT") or None,
        **dict(parsed.get("OPTIONS") or {}),
    }
    params.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
    params.setdefault("application_name", APPLICATION_NAME)
    return {key: value for key, value in params.items() if value is not None}


def query_url(url: str) -> ServerFacts:
    """The facts over one connection opened from DATABASE_URL with psycopg (3) or psycopg2."""
    params = url_params(url)
    secrets = [str(params.get("password", "")), url]
    driver = _driver()
    try:
        connection = driver.connect(**params)
    except Exception as error:  # noqa: BLE001 - the driver's words, password removed
        raise CannotTell(_cannot_connect(error, secrets)) from None
    try:
        connection.autocommit = True

        def run(sql: str) -> list[tuple[Any, ...]]:
            cursor = connection.cursor()
            try:
                cursor.execute(sql)
                return list(cursor.fetchall())
            finally:
                cursor.close()

        return read_facts(run)
    except Exception as error:  # noqa: BLE001
        raise CannotTell(_cannot_connect(error, secrets)) from None
    finally:
        connection.close()


def _driver() -> Any:
    """psycopg (3) if the app has it, else psycopg2: what Django would use."""
    for name in ("psycopg", "psycopg2"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise CannotTell("neither psycopg nor psycopg2 is installed")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _cannot_connect(error: BaseException, secrets: Sequence[str]) -> str:
    """The driver's reason, on one line, with every secret replaced by ***."""
    text = " ".join(line.strip() for line in str(error).strip().splitlines() if line.strip())
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return f"cannot connect: {type(error).__name__}: {text}" if text else type(error).__name__


# -- the report -------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m djpool doctor",
        description="Does the app's connection budget fit the database server's limit?",
    )
    p.add_argument("--dynos", type=_positive, default=1, help="web dynos (default 1)")
    p.add_argument(
        "--web-concurrency",
        type=_positive,
        default=None,
        help="processes per web dyno (default: WEB_CONCURRENCY, else 1)",
    )
    p.add_argument("--worker-dynos", type=_positive, default=0, help="worker dynos (default 0)")
    p.add_argument(
        "--worker-concurrency",
        type=_positive,
        default=1,
        help="processes per worker dyno that use the database (default 1)",
    )
    p.add_argument("--alias", default="default", help="Django database alias (default: default)")
    return p


def web_concurrency(environ: Mapping[str, str], given: int | None) -> tuple[int, str]:
    """Processes per web dyno, and where the number came from."""
    if given is not None:
        return given, "from --web-concurrency"
    raw = environ.get("WEB_CONCURRENCY", "").strip()
    if not raw:
        return 1, "WEB_CONCURRENCY is not set: gunicorn's default"
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise CannotTell(f"WEB_CONCURRENCY={raw!r} is not valid: expected a whole number from 1")
    return value, "from the environment"


def main(environ: Mapping[str, str], argv: Sequence[str] = (), out: TextIO | None = None) -> int:
    """Check the budget; print the report on ``out`` (stdout); return the exit status."""
    out = out if out is not None else sys.stdout
    args = parser().parse_args(list(argv))

    def say(line: str = "", prefix: str = DETAIL) -> None:
        print(prefix + line, file=out)

    try:
        return _report(environ, args, say)
    except CannotTell as error:
        say(f"Error: {error}", ERROR)
        return CANNOT_TELL
    except config.ConfigError as error:
        say(f"Error: {error}", ERROR)
        return CANNOT_TELL


def _dynos(count: int, kind: str) -> str:
    return f"{count} {kind} dyno" + ("" if count == 1 else "s")


def _report(environ: Mapping[str, str], args: argparse.Namespace, say: Callable[..., None]) -> int:
    """The whole report: configuration, server, budget; FITS or DOES_NOT_FIT."""
    settings = config.pool_settings(environ)
    pooler = config.transaction_pooler(environ)
    concurrency = _say_configuration(environ, args, settings, say)
    target, connection = _target(environ, args)
    say(f"connects through {target.how}: {target.where.describe()}")
    behind = pooler.covers(target.where.host, target.where.port)
    facts = _query(environ, connection)
    _say_server(facts, say, behind)
    formation = Formation(
        per_process=settings.size + settings.max_overflow,
        web_dynos=args.dynos,
        web_concurrency=concurrency,
        worker_dynos=args.worker_dynos,
        worker_concurrency=args.worker_concurrency,
    )
    _say_budget(formation, settings, concurrency, say)
    if behind:
        _say_behind_pooler(formation, facts, pooler, target.where, say)
        return FITS
    return _say_verdict(formation, settings, facts, pooler, say)


def _say_verdict(
    formation: Formation,
    settings: config.PoolSettings,
    facts: ServerFacts,
    pooler: config.TransactionPooler,
    say: Callable[..., None],
) -> int:
    """Direct connections: FITS, or DOES_NOT_FIT with what to change."""
    if pooler.forced is None and pooler.host:
        say(
            f"{config.POOLER_URL_VARIABLE} is set, but this is not its address: the budget "
            "below counts direct connections (if the app's settings connect through the "
            "pooler, set DJANGO_SETTINGS_MODULE to check them)"
        )
    verdict = judge(formation, facts.limit, settings.max_overflow)
    if verdict.fits:
        spare = verdict.limit - verdict.needed
        say(
            f"fits: at most {verdict.needed} of the {verdict.limit} connections role "
            f"{facts.role!r} may open ({spare} left for heroku run, the release phase "
            "and other clients)"
        )
        say(f"up to {_dynos(verdict.web_dynos_that_fit, 'web')} fit with these settings")
        return FITS
    _say_what_to_change(formation, settings, verdict, facts.role, say)
    return DOES_NOT_FIT


def _say_configuration(
    environ: Mapping[str, str],
    args: argparse.Namespace,
    settings: config.PoolSettings,
    say: Callable[..., None],
) -> int:
    """The effective configuration (never the password); returns WEB_CONCURRENCY."""
    metrics = config.metrics_settings(environ)
    concurrency, concurrency_from = web_concurrency(environ, args.web_concurrency)
    say("djpool doctor", STEP)
    say("Configuration", STEP)
    interval = f" POOL_METRICS_INTERVAL={metrics.interval}s"
    unpooled = " (POOL_DISABLED: the app runs unpooled)" if config.is_disabled(environ) else ""
    say(settings.describe() + interval + unpooled)
    say(f"WEB_CONCURRENCY={concurrency} ({concurrency_from})")
    return concurrency


def _target(environ: Mapping[str, str], args: argparse.Namespace) -> tuple[Target, Any]:
    """Where the app connects, and Django's connection there (None: from DATABASE_URL).

    Django's settings when DJANGO_SETTINGS_MODULE is set, else DATABASE_URL.
    """
    if environ.get("DJANGO_SETTINGS_MODULE", "").strip():
        return through_django(environ, args.alias)
    url = environ.get("DATABASE_URL", "").strip()
    if url:
        return Target("DATABASE_URL", config.database_target(url)), None
    raise CannotTell("neither DJANGO_SETTINGS_MODULE nor DATABASE_URL is set")


def _query(environ: Mapping[str, str], connection: Any) -> ServerFacts:
    """Connect once the way the app does (Django's ``connection``, else DATABASE_URL)."""
    url = environ.get("DATABASE_URL", "").strip()
    if connection is None:
        return query_url(url)
    password = str(connection.settings_dict.get("PASSWORD") or "")
    return query_django(connection, [password, url])


def _say_server(facts: ServerFacts, say: Callable[..., None], behind_pooler: bool) -> None:
    """The server's limits; behind a pooler the TLS read is that of the pooler's own connection."""
    say("Server", STEP)
    tls = f"TLS {facts.tls}" if facts.tls else "no TLS"
    hop = "the pooler's connection to it" if behind_pooler else "this connection"
    say(f"PostgreSQL {facts.version}, {hop}: {tls}")
    reserved = f"superuser_reserved_connections={facts.superuser_reserved}"
    if facts.reserved is not None:
        reserved += f", reserved_connections={facts.reserved}"
    say(f"max_connections={facts.max_connections} ({reserved})")
    limits = [f"role connection limit {facts.role_limit}"] if facts.role_limit >= 0 else []
    if facts.database_limit >= 0:
        limits.append(f"database connection limit {facts.database_limit}")
    extra = f"; {', '.join(limits)}" if limits else ""
    say(f"role {facts.role!r} may open {facts.limit} connections{extra}")
    in_use = sum(count for _, count in facts.in_use)
    shown = ", ".join(f"{count} {name}" for name, count in facts.in_use[:8])
    say(f"in use now, besides this one: {in_use}" + (f" ({shown})" if shown else ""))


def _say_budget(
    formation: Formation,
    settings: config.PoolSettings,
    concurrency: int,
    say: Callable[..., None],
) -> None:
    say("Connection budget", STEP)
    say(
        f"each process: POOL_SIZE {settings.size} + POOL_MAX_OVERFLOW {settings.max_overflow}"
        f" = {formation.per_process}"
    )
    say(
        f"each web dyno: WEB_CONCURRENCY {concurrency} x {formation.per_process}"
        f" = {formation.per_web_dyno}"
    )
    formula = f"{_dynos(formation.web_dynos, 'web')} x {formation.per_web_dyno}"
    if formation.worker_dynos:
        formula += (
            f" + {_dynos(formation.worker_dynos, 'worker')} x {formation.worker_concurrency}"
            f" processes x {formation.per_process}"
        )
    say(f"formation: {formula} = {formation.total}")


def _say_behind_pooler(
    formation: Formation,
    facts: ServerFacts,
    pooler: config.TransactionPooler,
    where: config.DatabaseTarget,
    say: Callable[..., None],
) -> None:
    """Behind a transaction pooler the formation's connections are the pooler's clients.

    The server then sees only the pooler's own connections, so the limit above
    bounds the pooler's pool size, not the formation (docs/transaction-pooling.md).
    """
    source = f"{config.POOLER_VARIABLE}=1" if pooler.forced else config.POOLER_URL_VARIABLE
    address = f"{where.host or 'local socket'}:{where.port or config.DEFAULT_PORT}"
    say(
        f"behind a transaction pooler ({address}, {source}): these {formation.total} "
        "are client connections to the pooler, not server connections"
    )
    say(
        "the server sees only the pooler's own connections: its pool size must stay "
        f"within the {facts.limit} connections role {facts.role!r} may open"
    )
    say(
        f"fits: the pooler must accept {formation.total} client connections from the app "
        "(PgBouncer's max_client_conn; its default is 100)"
    )


def _say_what_to_change(
    formation: Formation,
    settings: config.PoolSettings,
    verdict: Verdict,
    role: str,
    say: Callable[..., None],
) -> None:
    """Why the formation does not fit, and the POOL_SIZE (or the pooler) that would."""
    say(
        f"Error: does not fit: the formation may open {verdict.needed} connections; "
        f"role {role!r} may open {verdict.limit}.",
        ERROR,
    )
    say(f"With these settings {_dynos(verdict.web_dynos_that_fit, 'web')} fit.", ERROR)
    if verdict.pool_size_that_fits >= 1:
        overflow = f" (with POOL_MAX_OVERFLOW={settings.max_overflow})"
        say(
            f"To run this formation: heroku config:set POOL_SIZE={verdict.pool_size_that_fits}"
            + (overflow if settings.max_overflow else ""),
            ERROR,
        )
    elif verdict.per_process_that_fits >= 1:
        say(
            "To run this formation: heroku config:set "
            f"POOL_SIZE={verdict.per_process_that_fits} POOL_MAX_OVERFLOW=0",
            ERROR,
        )
    else:
        say(
            f"No POOL_SIZE fits {formation.processes} processes in {verdict.limit} "
            "connections: put Heroku's Connection Pooling in front of the database",
            ERROR,
        )
        say(f"({CONNECTION_POOLING}), use fewer processes, or a larger plan.", ERROR)
