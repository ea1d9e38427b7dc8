"""Aliases behind a transaction pooler: decided once per connection wrapper, and what changes.

A transaction pooler (PgBouncer in transaction mode, as Heroku's Connection
Pooling runs it) gives a client a server connection for one transaction at a
time, so two statements of one request may run on two server connections,
and a server connection serves other clients between them. For such an alias
(``TransactionPooler.covers`` its HOST and PORT):

- server-side cursors are off (Django's DISABLE_SERVER_SIDE_CURSORS, set in
  the alias's settings when its first wrapper is made, before any
  ``QuerySet.iterator()`` reads it): a cursor declared in one transaction is
  gone, or another client's, in the next;
- psycopg 3's prepared statements stay off (``prepare_threshold=None``,
  Django's default): an OPTIONS value that turns them on is overridden with
  one warning. Overridden rather than refused: the settings are read only
  when the app runs, where refusing would take the app down over a
  performance option whose override changes no result;
- djpool adds no startup ``options`` (PgBouncer before 1.20 refuses them,
  and keeps the client's time zone itself), and the reset at checkin is
  client-side only, without DISCARD ALL (see reset.py and
  docs/transaction-pooling.md for the measurements).
"""

from __future__ import annotations

from typing import Any

from djpool.config import DEFAULT_PORT, POOLER_VARIABLE, TransactionPooler
from djpool.log import info_once, warn_once

_BEHIND = "_djpool_behind_pooler"  # on the wrapper: this alias is behind a transaction pooler


def adapt(wrapper: Any, pooler: TransactionPooler) -> bool:
    """Decide for a new wrapper; behind the pooler, turn the alias's server-side cursors off.

    Called when Django makes the wrapper (its first use in a thread), so the
    settings change is in place before the first query of the alias.
    """
    settings = wrapper.settings_dict
    host, port = settings.get("HOST"), settings.get("PORT")
    behind = pooler.covers(host, port)
    wrapper.__dict__[_BEHIND] = behind
    if behind:
        settings["DISABLE_SERVER_SIDE_CURSORS"] = True
        where = f"{POOLER_VARIABLE}=1" if pooler.forced else f"{host}:{port or DEFAULT_PORT}"
        info_once(
            f"pooler:{wrapper.alias}",
            f"database alias {wrapper.alias!r} is behind a transaction pooler ({where}): "
            "server-side cursors off, no DISCARD ALL at checkin",
        )
    return behind


def is_behind(wrapper: Any) -> bool:
    """What ``adapt`` decided for this wrapper (False for wrappers it never saw)."""
    return bool(wrapper.__dict__.get(_BEHIND, False))


def connection_params(wrapper: Any, conn_params: dict[str, Any]) -> dict[str, Any]:
    """``conn_params`` with psycopg 3's prepared statements kept off (one warning if asked on)."""
    threshold = conn_params.get("prepare_threshold")
    if threshold is None:
        return conn_params
    warn_once(
        f"prepare:{wrapper.alias}",
        f"database alias {wrapper.alias!r} sets OPTIONS['prepare_threshold']={threshold!r} "
        "behind a transaction pooler; djpool keeps it None (no prepared statements): a "
        "statement prepared on one server connection may be executed on another",
    )
    return {**conn_params, "prepare_threshold": None}
