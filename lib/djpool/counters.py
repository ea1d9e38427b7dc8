"""What a pool counts: plain numbers, updated without a lock, read by ``djpool.stats()``.

Why no lock: the counters are bumped on every checkout, and a lock there
would cost more than the rest of the bookkeeping. Under the GIL an attribute
``+=`` is not interrupted in practice; if one ever were, a metric would be
one short, which metrics tolerate. The gauge of waiting threads is a set
(``add``/``discard`` are atomic), so it can never drift.

Standard library only: no SQLAlchemy, so it is tested in the fast tier.
"""

from __future__ import annotations

from collections import deque

WAIT_SAMPLES = 1024  # checkout waits kept per report for the percentiles


class WaitTimes:
    """How long checkouts waited since the last report.

    The count and the maximum are exact; the percentiles come from the last
    ``WAIT_SAMPLES`` waits (a bounded deque), so memory stays bounded when
    nobody reads them.
    """

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=WAIT_SAMPLES)
        self._count = 0
        self._max = 0.0

    def add(self, seconds: float) -> None:
        """Record one checkout's wait."""
        self._samples.append(seconds)
        self._count += 1
        if seconds > self._max:
            self._max = seconds

    def window(self) -> tuple[deque[float], int]:
        """The current window's newest samples and its count of waits, without restarting it.

        For a second reader (djpool.otel): a new deque means a new window.
        """
        return self._samples, self._count

    def summary(self, reset: bool = False) -> dict[str, float | int]:
        """count, p50, p95 and max in ms (0 with no checkouts); ``reset`` starts a new window."""
        samples, count, longest = sorted(self._samples), self._count, self._max
        if reset:
            self._samples, self._count, self._max = deque(maxlen=WAIT_SAMPLES), 0, 0.0
        return {
            "wait_count": count,
            "wait_p50_ms": _ms(_percentile(samples, 50)),
            "wait_p95_ms": _ms(_percentile(samples, 95)),
            "wait_max_ms": _ms(longest),
        }


class PoolCounters:
    """Totals since the pool was built, the threads waiting now, and the recent waits."""

    def __init__(self) -> None:
        self.connects = 0  # physical connections opened
        self.checkouts = 0  # connections handed out (each passed the reset and health check)
        self.timeouts = 0  # checkouts that gave up after POOL_TIMEOUT
        self.invalidated = 0  # connections discarded (dead, failed reset, disposed while out)
        self.reset_failures = 0  # resets that failed at checkin or when read at checkout
        self.waiting: set[int] = set()  # idents of the threads inside Pool.checkout now
        self.waits = WaitTimes()

    def totals(self) -> dict[str, int]:
        """The counters since start, and the waiting threads now, as a plain dict."""
        return {
            "waiting": len(self.waiting),
            "connects": self.connects,
            "checkouts": self.checkouts,
            "timeouts": self.timeouts,
            "invalidated": self.invalidated,
            "reset_failures": self.reset_failures,
        }

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value}" for name, value in self.totals().items())
        return f"PoolCounters({shown})"


def _percentile(ordered: list[float], percent: int) -> float:
    """Nearest-rank percentile of an ordered list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, -(-percent * len(ordered) // 100))  # ceil without importing math
    return ordered[rank - 1]


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
