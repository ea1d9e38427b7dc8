"""The setups compared: the same sample app and server, seven ways to get a connection.

Each setup is the dyno's config vars (and whether the shim is on PYTHONPATH)
for the unchanged sample app; bench/settings/benchsettings.py turns the
BENCH_* variables into DATABASES changes the app's own settings cannot make.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# djpool's defaults (lib/djpool/config.py), for the connection-count target.
DJPOOL_POOL_SIZE = 5
DJPOOL_MAX_OVERFLOW = 0


@dataclass(frozen=True)
class Setup:
    """One way of connecting.

    key: short name used in tables ("c", "d-txn", ...).
    label: what it is, for people.
    shim: djpool's shim on PYTHONPATH.
    env: config vars for the app (APP_*, BENCH_*, POOL_*).
    pgbouncer: PgBouncer pool mode when the app talks to a local PgBouncer.
    """

    key: str
    label: str
    shim: bool = False
    env: dict[str, str] = field(default_factory=dict)
    pgbouncer: str | None = None

    @property
    def database(self) -> str:
        """Each setup has a database of its own, so the server's counts tell them apart."""
        return "bench_" + self.key.replace("-", "_")


SETUPS: tuple[Setup, ...] = (
    Setup("a", "no pooling (CONN_MAX_AGE=0)", env={"APP_CONN_MAX_AGE": "0"}),
    Setup("b", "persistent, Heroku template (CONN_MAX_AGE=600, health checks)",
          env={"APP_CONN_MAX_AGE": "600", "APP_CONN_HEALTH_CHECKS": "1"}),
    Setup("c", "djpool, default config (shim, CONN_MAX_AGE=0)", shim=True,
          env={"APP_CONN_MAX_AGE": "0"}),
    Setup("d-sess", "PgBouncer session mode (buildpack config)", pgbouncer="session",
          env={"APP_CONN_MAX_AGE": "0"}),
    Setup("d-txn", "PgBouncer transaction mode (buildpack config)", pgbouncer="transaction",
          env={"APP_CONN_MAX_AGE": "0"}),
    Setup("e", "Django native pool (psycopg_pool, OPTIONS['pool']=True)",
          env={"APP_CONN_MAX_AGE": "0", "BENCH_DB_OPTIONS": '{"pool": true}'}),
    Setup("f", "django-db-connection-pool (defaults)",
          env={"APP_CONN_MAX_AGE": "0", "BENCH_DB_ENGINE": "dj_db_conn_pool.backends.postgresql"}),
    Setup("g", "ceiling: one connection per thread, never checked or closed",
          env={"BENCH_CONN_MAX_AGE": "none"}),
)

BY_KEY = {setup.key: setup for setup in SETUPS}

WORKLOADS: dict[str, str] = {
    "items": "/items/",    # one indexed query
    "items3": "/items3/",  # three indexed queries in transaction.atomic()
}


def select(keys: str | None) -> list[Setup]:
    """The setups named in a comma-separated list ("a,c,g"), or all of them."""
    if not keys:
        return list(SETUPS)
    wanted = [key.strip() for key in keys.split(",") if key.strip()]
    unknown = [key for key in wanted if key not in BY_KEY]
    if unknown:
        raise SystemExit(f"unknown setup(s) {', '.join(unknown)}; "
                         f"known: {', '.join(BY_KEY)}")
    return [BY_KEY[key] for key in wanted]
