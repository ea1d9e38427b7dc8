"""counters: the counts and checkout waits behind djpool.stats()."""

from __future__ import annotations

import djpool
from djpool import counters
from djpool.counters import PoolCounters, WaitTimes


def test_no_waits_reads_as_zeros() -> None:
    assert WaitTimes().summary() == {
        "wait_count": 0,
        "wait_p50_ms": 0.0,
        "wait_p95_ms": 0.0,
        "wait_max_ms": 0.0,
    }


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    waits = WaitTimes()
    for ms in range(1, 101):  # 1 ms .. 100 ms, out of order
        waits.add(((ms * 37) % 100 + 1) / 1000)
    assert waits.summary() == {
        "wait_count": 100,
        "wait_p50_ms": 50.0,
        "wait_p95_ms": 95.0,
        "wait_max_ms": 100.0,
    }


def test_reset_starts_a_new_window() -> None:
    waits = WaitTimes()
    waits.add(0.5)
    assert waits.summary(reset=True)["wait_max_ms"] == 500.0
    assert waits.summary()["wait_count"] == 0
    waits.add(0.002)
    assert waits.summary() == {
        "wait_count": 1,
        "wait_p50_ms": 2.0,
        "wait_p95_ms": 2.0,
        "wait_max_ms": 2.0,
    }


def test_memory_stays_bounded_while_count_and_max_stay_exact() -> None:
    waits = WaitTimes()
    waits.add(9.0)
    for _ in range(counters.WAIT_SAMPLES * 3):
        waits.add(0.001)
    summary = waits.summary()
    assert summary["wait_count"] == counters.WAIT_SAMPLES * 3 + 1
    assert summary["wait_max_ms"] == 9000.0  # exact, though its sample was overwritten
    assert summary["wait_p95_ms"] == 1.0


def test_totals_and_repr_are_plain() -> None:
    counters = PoolCounters()
    counters.connects, counters.checkouts, counters.timeouts = 2, 5, 1
    assert counters.totals() == {
        "waiting": 0,
        "connects": 2,
        "checkouts": 5,
        "timeouts": 1,
        "invalidated": 0,
        "reset_failures": 0,
    }
    assert repr(counters).startswith("PoolCounters(waiting=0, connects=2, checkouts=5")


def test_stats_is_empty_in_a_process_without_pools() -> None:
    assert djpool.stats() == []
