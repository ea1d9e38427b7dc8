"""djpool: a SQLAlchemy QueuePool under Django's PostgreSQL backend, with no code change.

The data path, one module per step:

    words         the true/false words of yes/no variables (the shim reads them too)
    config        environment -> one immutable Config (parse and validate once)
    startup       called by the shim: load config, announce it, register the hook
    importhook    run a patch when a module is first imported
    registry      one pool per process per (alias, connection parameters); fork safety
    pool          one QueuePool with djpool's events, and the checkout's wait
    counters      what a pool counts, read by ``djpool.stats()``
    reset         return a connection clean (DISCARD ALL) or not at all
    health        notice a dead idle connection without a round trip
    django_patch  check connections out in get_new_connection, in again in _close
    log           the start-up line on stderr; runtime warnings on the ``djpool`` logger

Watching the pools (issue 13; docs/observability.md):

    metrics       an l2met line per pool every POOL_METRICS_INTERVAL; event lines
    otel          the pools as OpenTelemetry instruments, if the app has the API
    doctor        ``python -m djpool doctor``: does the connection budget fit the server?

Importing this package imports nothing else: the shim's start-up cost stays
in the modules it needs.
"""

__version__ = "0.1.0"


def stats(*, reset_waits: bool = False) -> list[dict[str, object]]:
    """One plain dict per live pool in this process; [] while there is none.

    Each has: alias, database, host; size, max_overflow; checked_out, idle,
    overflow (overflow connections open now), waiting (threads in a checkout
    now); connects, checkouts, timeouts, invalidated, reset_failures (since
    the pool was built); wait_count, wait_p50_ms, wait_p95_ms, wait_max_ms
    (checkout waits since the last reset_waits=True read: a metrics reporter
    passes it so that each report covers its own interval).
    """
    from djpool import startup

    registry = startup.registry()
    return [] if registry is None else registry.stats(reset_waits)
