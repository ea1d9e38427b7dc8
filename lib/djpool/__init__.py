"""djpool: a SQLAlchemy QueuePool under Django's PostgreSQL backend, with no code change.

The data path, one module per step:

    config        environment -> one immutable Config (parse and validate once)
    startup       called by the shim: load config, announce it, register the hook
    importhook    run a patch when a module is first imported
    registry      one pool per process per (alias, connection parameters); fork safety
    pool          build a QueuePool for a driver: dialect, reset and liveness events
    reset         return a connection clean (DISCARD ALL) or not at all
    health        notice a dead idle connection without a round trip
    django_patch  check connections out in get_new_connection, in again in _close
"""

__version__ = "0.1.0"
