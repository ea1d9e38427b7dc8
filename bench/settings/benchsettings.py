"""The sample app's settings (tests/app/testproj/settings.py) plus the benchmark's knobs.

The benchmark serves the unchanged sample app; only its DATABASES entry is
adjusted per setup, from variables the benchmark sets (never a user):

    BENCH_CONN_MAX_AGE   CONN_MAX_AGE: a whole number, or "none" for forever
    BENCH_DB_ENGINE      ENGINE, e.g. dj_db_conn_pool.backends.postgresql
    BENCH_DB_OPTIONS     JSON merged into OPTIONS, e.g. {"pool": true}
    BENCH_POOL_OPTIONS   JSON for django-db-connection-pool's POOL_OPTIONS
    BENCH_POOL_RESET     "discard_all": Django's own pool runs DISCARD ALL on every
                         return (psycopg_pool's reset callback), djpool's guarantee

The app's own APP_CONN_MAX_AGE / APP_CONN_HEALTH_CHECKS still apply first.
"""

import json
import os

from testproj.settings import *  # noqa: F403 - the sample app's settings, unchanged
from testproj.settings import DATABASES

_db = DATABASES["default"]
_max_age = os.environ.get("BENCH_CONN_MAX_AGE", "")
if _max_age:
    _db["CONN_MAX_AGE"] = None if _max_age.lower() == "none" else int(_max_age)
if os.environ.get("BENCH_DB_ENGINE"):
    _db["ENGINE"] = os.environ["BENCH_DB_ENGINE"]
if os.environ.get("BENCH_DB_OPTIONS"):
    _db.setdefault("OPTIONS", {}).update(json.loads(os.environ["BENCH_DB_OPTIONS"]))
if os.environ.get("BENCH_POOL_OPTIONS"):
    _db["POOL_OPTIONS"] = json.loads(os.environ["BENCH_POOL_OPTIONS"])


def _discard_all(connection):  # type: ignore[no-untyped-def]
    """psycopg_pool's reset callback: the session of every returned connection wiped."""
    connection.autocommit = True  # DISCARD ALL refuses to run inside a transaction
    connection.execute("DISCARD ALL")


if os.environ.get("BENCH_POOL_RESET") == "discard_all":
    _options = _db.setdefault("OPTIONS", {})
    _pool = _options.get("pool")
    _options["pool"] = {**(_pool if isinstance(_pool, dict) else {}), "reset": _discard_all}
