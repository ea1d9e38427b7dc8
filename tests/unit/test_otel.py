"""otel: which checkout waits go into the wait_time histogram (no OpenTelemetry needed)."""

from __future__ import annotations

from djpool import otel
from djpool.counters import WaitTimes


def test_each_wait_is_handed_over_once_across_collections_and_window_restarts() -> None:
    waits, feed = WaitTimes(), otel.WaitFeed()
    assert feed.new_waits(waits) == []
    for seconds in (0.1, 0.2, 0.3):
        waits.add(seconds)
    assert feed.new_waits(waits) == [0.1, 0.2, 0.3]
    assert feed.new_waits(waits) == []
    waits.add(0.4)
    assert feed.new_waits(waits) == [0.4]
    waits.summary(reset=True)  # the log reporter starts a new window
    waits.add(0.5)
    assert feed.new_waits(waits) == [0.5]


def test_many_waits_are_spread_over_their_sorted_values_and_few_are_kept_whole() -> None:
    assert otel.spread([0.3, 0.1], most=5) == [0.3, 0.1]
    many = [n / 1000 for n in range(1000, -1, -1)]  # 1001 waits, 0 .. 1 s, unsorted
    picked = otel.spread(many, most=11)
    assert picked == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
