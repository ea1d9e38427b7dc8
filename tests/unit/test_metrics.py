"""metrics: the l2met line, what it counts, when it is written, and the events' rate limit."""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import pytest

from djpool import metrics
from djpool.metrics import RateLimiter, Reporter
from support.waiting import wait_until


def pool(**values: Any) -> dict[str, Any]:
    """A djpool.stats() dict: a pool of 5 with nothing happening, changed by ``values``."""
    stats: dict[str, Any] = {
        "alias": "default",
        "database": "app",
        "host": "db.example.com",
        "size": 5,
        "max_overflow": 0,
        "checked_out": 0,
        "idle": 0,
        "overflow": 0,
        "waiting": 0,
        "connects": 0,
        "checkouts": 0,
        "timeouts": 0,
        "invalidated": 0,
        "reset_failures": 0,
        "wait_count": 0,
        "wait_p50_ms": 0.0,
        "wait_p95_ms": 0.0,
        "wait_max_ms": 0.0,
    }
    stats.update(values)
    return stats


L2MET_FIELD = re.compile(r"^(source|pid|alias|(sample|count)#djpool\.[a-z0-9_]+)=[^\s=\"]+$")


def test_a_line_has_the_documented_fields_in_order_and_parses_as_l2met() -> None:
    stats = pool(checked_out=2, idle=3, waiting=1, wait_p95_ms=1.25, wait_max_ms=12.0)
    counts = {"checkouts": 40, "connects": 5, "timeouts": 1, "invalidated": 0}
    line = metrics.format_line("web.1", 42, stats, counts)
    assert line == (
        "source=web.1 pid=42 alias=default sample#djpool.size=5 sample#djpool.checked_out=2 "
        "sample#djpool.idle=3 sample#djpool.waiting=1 count#djpool.checkouts=40 "
        "count#djpool.connects=5 count#djpool.timeouts=1 count#djpool.invalidated=0 "
        "sample#djpool.wait_p95_ms=1.25 sample#djpool.wait_max_ms=12"
    )
    assert all(L2MET_FIELD.match(field) for field in line.split()), line


def test_without_a_dyno_the_source_is_the_pid_and_no_pid_field_repeats_it() -> None:
    assert metrics.source_name(None, 731) == "pid731"
    assert metrics.source_name("  ", 731) == "pid731"
    assert metrics.source_name("worker.2", 731) == "worker.2"
    line = metrics.format_line("pid731", None, pool(), dict.fromkeys(("checkouts",), 0))
    assert line.startswith("source=pid731 alias=default ")


def test_wait_times_are_plain_decimals_with_at_most_three_places() -> None:
    line = metrics.format_line("s", None, pool(wait_p95_ms=0.0004, wait_max_ms=1234.56789), {})
    assert "sample#djpool.wait_p95_ms=0 " in line and line.endswith("wait_max_ms=1234.568")


def test_an_alias_cannot_break_the_line_into_other_fields() -> None:
    line = metrics.format_line("s", None, pool(alias='my db="x"'), {})
    assert " alias=my_db__x_ " in line


def test_counts_are_since_the_previous_line_and_a_rebuilt_pool_counts_from_zero() -> None:
    first = pool(checkouts=10, connects=2, timeouts=0, invalidated=1)
    assert metrics.counts_since(first, None) == {
        "checkouts": 10,
        "connects": 2,
        "timeouts": 0,
        "invalidated": 1,
    }
    second = pool(checkouts=25, connects=2, timeouts=3, invalidated=1)
    assert metrics.counts_since(second, first) == {
        "checkouts": 15,
        "connects": 0,
        "timeouts": 3,
        "invalidated": 0,
    }
    rebuilt = pool(checkouts=4, connects=1)  # disposed and built again: totals restarted
    assert metrics.counts_since(rebuilt, second)["checkouts"] == 4


@pytest.mark.parametrize(
    ("stats", "counts", "expected"),
    [
        (pool(idle=5), {"checkouts": 0}, False),  # idle app: quiet
        (pool(idle=5), {"checkouts": 3}, True),  # traffic
        (pool(checked_out=2), {"checkouts": 0}, True),  # no counts, but connections held
        (pool(waiting=1), {"checkouts": 0}, True),
        (pool(wait_count=1), {}, True),
    ],
)
def test_a_line_is_written_when_something_happened_or_is_held(
    stats: dict[str, Any], counts: dict[str, int], expected: bool
) -> None:
    assert metrics.worth_a_line(stats, counts) is expected


class Pools:
    """What read_stats would return, changed by the test between reports."""

    def __init__(self, *stats: dict[str, Any]) -> None:
        self.stats = list(stats)

    def __call__(self) -> list[dict[str, Any]]:
        return [dict(s) for s in self.stats]


def test_the_reporter_writes_one_line_per_busy_pool_and_counts_between_its_reports() -> None:
    pools = Pools(pool(checkouts=10, idle=1), pool(alias="replica", idle=2))
    written: list[str] = []
    reporter = Reporter(1, "web.1", read=pools, write=written.append)
    assert reporter.report() == written
    assert len(written) == 1 and "alias=default" in written[0]  # replica: nothing happened
    assert "count#djpool.checkouts=10" in written[0]
    pools.stats[0] = pool(checkouts=13, idle=1)
    reporter.report()
    assert "count#djpool.checkouts=3 " in written[1] and f"pid={os.getpid()}" in written[1]
    reporter.report()  # nothing since: silence
    assert len(written) == 2


def test_the_thread_reports_every_interval_and_does_not_hold_the_process_open() -> None:
    pools = Pools(pool(checked_out=1))
    written: list[str] = []
    reporter = Reporter(0.05, None, read=pools, write=written.append)
    reporter.start()
    reporter.start()  # a second pool: still one thread
    threads = [t for t in threading.enumerate() if t.name == metrics.THREAD_NAME]
    assert len(threads) == 1 and threads[0].daemon
    wait_until(lambda: len(written) >= 3, timeout=10)
    assert all("sample#djpool.checked_out=1" in line for line in written)


def test_a_reporter_with_interval_zero_never_starts() -> None:
    reporter = Reporter(0, None, read=Pools(), write=lambda line: None)
    reporter.start()
    assert not reporter.running


def test_after_a_fork_the_child_forgets_the_thread_and_the_parents_counts() -> None:
    pools = Pools(pool(checkouts=10))
    written: list[str] = []
    reporter = Reporter(3600, None, read=pools, write=written.append)
    reporter.start()
    assert reporter.running
    reporter.report()
    reporter.forget_after_fork()
    assert not reporter.running  # as in a child: the parent's thread is not there
    reporter.report()
    assert "count#djpool.checkouts=10" in written[1]  # counted from the child's start


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_limiter_lets_one_line_a_minute_through_per_kind_and_pool() -> None:
    clock = Clock()
    limiter = RateLimiter(60, clock)
    assert limiter.allow("pool_exhausted", "default") == 0
    assert limiter.allow("pool_exhausted", "default") is None
    assert limiter.allow("pool_exhausted", "replica") == 0  # another pool
    assert limiter.allow("reset_failed", "default") == 0  # another kind
    clock.now += 59.9
    assert limiter.allow("pool_exhausted", "default") is None
    clock.now += 0.1
    assert limiter.allow("pool_exhausted", "default") == 2  # held back meanwhile
    assert limiter.allow("pool_exhausted", "default") is None


def test_after_forget_the_rate_limiter_starts_afresh() -> None:
    limiter = RateLimiter(60, Clock())
    limiter.allow("k", "p")
    limiter.forget()
    assert limiter.allow("k", "p") == 0


def test_an_event_line_names_the_kind_source_and_pool_then_its_fields() -> None:
    line = metrics.format_event(
        "pool_exhausted",
        "web.1",
        "default",
        [("checked_out", 5), ("oldest_checkout_s", 12.3456)],
        held_back=3,
        desc='said "no"\nthen',
    )
    assert line == (
        "event=pool_exhausted source=web.1 alias=default checked_out=5 oldest_checkout_s=12.346 "
        'suppressed=3 desc="said \\"no\\" then"'
    )


def test_events_are_rate_limited_per_kind_and_pool(
    monkeypatch: pytest.MonkeyPatch, fresh_logger: None, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(metrics, "_events", RateLimiter(60, Clock()))
    monkeypatch.setattr(metrics, "_dyno", "web.3")
    for _ in range(3):
        metrics.pool_exhausted(pool(checked_out=5, waiting=2, timeouts=4), 7.5, 10.0)
        metrics.reset_failed("default", "OperationalError: server closed the connection")
        metrics.closed_connection_found("default")
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "djpool: event=pool_exhausted source=web.3 alias=default size=5 max_overflow=0 "
        "checked_out=5 idle=0 waiting=2 timeouts=4 oldest_checkout_s=7.5 "
        'desc="all 5 connections are in use and none came back within POOL_TIMEOUT=10s"',
        "djpool: event=reset_failed source=web.3 alias=default "
        'desc="discarded a pooled connection whose reset failed '
        '(OperationalError: server closed the connection)"',
        "djpool: event=server_closed_connection source=web.3 alias=default "
        'desc="a pooled connection was closed by the server; replaced at checkout"',
    ]


# -- POOL_METRICS_INTERVAL and DYNO, read by config (the one home of their rules) ------------


def test_the_interval_defaults_to_a_minute_and_zero_turns_the_lines_off() -> None:
    from djpool import config

    assert config.metrics_settings({}) == config.MetricsSettings(60, None)
    assert config.metrics_settings({"POOL_METRICS_INTERVAL": " 0 ", "DYNO": "web.2"}) == (
        config.MetricsSettings(0, "web.2")
    )
    assert config.metrics_settings({"POOL_METRICS_INTERVAL": "", "DYNO": " "}).dyno is None


@pytest.mark.parametrize("value", ["soon", "-1", "1.5", "86401", "1e3"])
def test_a_bad_interval_is_one_line_naming_it_and_what_is_allowed(value: str) -> None:
    from djpool import check, config

    with pytest.raises(config.ConfigError) as raised:
        config.metrics_settings({"POOL_METRICS_INTERVAL": value})
    assert str(raised.value) == (
        f"POOL_METRICS_INTERVAL={value!r} is not valid: expected a whole number from 0 to 86400"
    )
    assert check.main({"POOL_METRICS_INTERVAL": value}) == 1  # the build fails on it too
