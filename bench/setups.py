"""The setups compared: the same sample app and server, seven ways to get a connection.

Each setup is the dyno's config vars (and whether the shim is on PYTHONPATH)
for the unchanged sample app; bench/settings/benchsettings.py turns the
BENCH_* variables into DATABASES changes the app's own settings cannot make.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

_LIB = str(Path(__file__).resolve().parent.parent / "lib")
if _LIB not in sys.path:
    sys.path.append(_LIB)

from djpool.config import PoolSettings  # noqa: E402 - needs lib/ on sys.path

# djpool's defaults (the connection-count target): their one home is PoolSettings.
DJPOOL_POOL_SIZE = PoolSettings().size
DJPOOL_MAX_OVERFLOW = PoolSettings().max_overflow


@dataclass(frozen=True)
class Setup:
    """One way of connecting.

    key: short name used in tables ("c", "d-txn", ...).
    label: what it is, for people.
    shim: djpool's shim on PYTHONPATH (True: this repo's; a Path: another tree's shim/).
    env: config vars for the app (APP_*, BENCH_*, POOL_*).
    pgbouncer: PgBouncer pool mode when the app talks to a local PgBouncer.
    """

    key: str
    label: str
    shim: bool | Path = False
    env: dict[str, str] = field(default_factory=dict)
    pgbouncer: str | None = None

    @property
    def database(self) -> str:
        """Each setup has a database of its own, so the server's counts tell them apart."""
        return "bench_" + self.key.replace("-", "_").replace("+", "_")


SETUPS: tuple[Setup, ...] = (
    Setup("a", "no pooling (CONN_MAX_AGE=0)", env={"APP_CONN_MAX_AGE": "0"}),
    Setup(
        "b",
        "persistent, Heroku template (CONN_MAX_AGE=600, health checks)",
        env={"APP_CONN_MAX_AGE": "600", "APP_CONN_HEALTH_CHECKS": "1"},
    ),
    Setup(
        "c",
        "djpool, default config (shim, CONN_MAX_AGE=0)",
        shim=True,
        env={"APP_CONN_MAX_AGE": "0"},
    ),
    # The app of b with heroku-buildpack-pgbouncer added: its client connections to the
    # local PgBouncer persist (with CONN_MAX_AGE=0 every request would pay a SCRAM login
    # to PgBouncer, as slow as setup a; see docs/benchmark.md).
    Setup(
        "d-sess",
        "PgBouncer session mode (buildpack config, app as b)",
        pgbouncer="session",
        env={"APP_CONN_MAX_AGE": "600", "APP_CONN_HEALTH_CHECKS": "1"},
    ),
    Setup(
        "d-txn",
        "PgBouncer transaction mode (buildpack config, app as b)",
        pgbouncer="transaction",
        env={"APP_CONN_MAX_AGE": "600", "APP_CONN_HEALTH_CHECKS": "1"},
    ),
    Setup(
        "e",
        "Django native pool (psycopg_pool, OPTIONS['pool']=True)",
        env={"APP_CONN_MAX_AGE": "0", "BENCH_DB_OPTIONS": '{"pool": true}'},
    ),
    # e with djpool's guarantee: psycopg_pool runs DISCARD ALL on every returned
    # connection (in its worker thread), and the time zone rides in the startup
    # packet as djpool puts it, so the reset does not cost Django a SET TIME ZONE.
    Setup(
        "e-reset",
        "Django native pool + DISCARD ALL on return (djpool's isolation)",
        env={
            "APP_CONN_MAX_AGE": "0",
            "BENCH_DB_OPTIONS": '{"pool": true, "options": "-c TimeZone=UTC"}',
            "BENCH_POOL_RESET": "discard_all",
        },
    ),
    Setup(
        "f",
        "django-db-connection-pool (defaults)",
        env={"APP_CONN_MAX_AGE": "0", "BENCH_DB_ENGINE": "dj_db_conn_pool.backends.postgresql"},
    ),
    Setup(
        "g",
        "ceiling: one connection per thread, never checked or closed",
        env={"BENCH_CONN_MAX_AGE": "none"},
    ),
)

BY_KEY = {setup.key: setup for setup in SETUPS}
CEILING = "g"  # the setup every other one is measured against

WORKLOADS: dict[str, str] = {
    "items": "/items/",  # one indexed query
    "items3": "/items3/",  # three indexed queries in transaction.atomic()
}

# The connection-budget scenario's request holds its connection for a while
# (SELECT pg_sleep), so that every app thread needs one at the same time, as
# under a burst of slower requests; with /items/ on loopback, two cores serve the
# load with a few threads per process and the budget is never tested. Its
# requests come on new connections (wrk -H "Connection: close"), as from Heroku's
# router, so gunicorn's processes share them evenly.
BUDGET_PATH = "/slow/?ms=50"


def select(keys: str | None) -> list[Setup]:
    """The setups named in a comma-separated list ("a,c,g"), or all of them."""
    if not keys:
        return list(SETUPS)
    wanted = [key.strip() for key in keys.split(",") if key.strip()]
    unknown = [key for key in wanted if key not in BY_KEY]
    if unknown:
        raise SystemExit(f"unknown setup(s) {', '.join(unknown)}; known: {', '.join(BY_KEY)}")
    return [BY_KEY[key] for key in wanted]


def variant_of_c(spec: str) -> Setup:
    """``NAME=TREE``: setup c with the shim of another tree (a proposal applied to a copy)."""
    name, _, tree = spec.partition("=")
    if not name or not tree or not (Path(tree) / "shim").is_dir():
        raise SystemExit(f"--variant wants NAME=TREE with TREE/shim a directory, not {spec!r}")
    return replace(
        BY_KEY["c"], key=f"c+{name}", label=f"djpool + {name}", shim=Path(tree).resolve() / "shim"
    )
