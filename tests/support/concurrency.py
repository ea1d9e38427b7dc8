"""Requests at once and load over time, with what each client got and when.

A pool is about concurrency, so most behaviour tests send several requests
at the same instant (``in_parallel``, ``in_threads``) or keep a steady load
on the app while a fault happens (``Load``), then assert on every outcome.
Everything here is bounded: every thread is joined with a timeout and a
thread that hangs fails the test instead of hanging the suite; an error in a
thread is raised in the test, never lost.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from support.waiting import wait_until

T = TypeVar("T")

# A request to send: no arguments, returns (HTTP status, body), e.g. ``lambda: app.get("/pid/")``.
Send = Callable[[], tuple[int, Any]]


@dataclass
class Outcome:
    """One HTTP request: when it ran (time.monotonic()) and what the client got."""

    started: float
    ended: float
    status: int | None  # None: no HTTP answer at all (refused, reset, cut short)
    body: Any  # the parsed body; with no answer, the repr() of the error

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def timed(send: Send) -> Outcome:
    """Send one request and time it; a connection that fails is an outcome, not an error."""
    started = time.monotonic()
    try:
        status, body = send()
    except (OSError, http.client.HTTPException) as error:  # refused, reset, cut short
        return Outcome(started, time.monotonic(), None, repr(error))
    return Outcome(started, time.monotonic(), status, body)


def summary(outcomes: Iterable[Outcome]) -> str:
    """A short description of the failures among ``outcomes``, for assertion messages."""
    outcomes = list(outcomes)
    failed = [o for o in outcomes if not o.ok]
    shown = [(o.status, str(o.body)[:160]) for o in failed[:5]]
    return f"{len(outcomes)} requests, {len(failed)} failed: {shown}"


def in_threads(count: int, work: Callable[[int], T], timeout: float = 120.0) -> list[T]:
    """Run ``work(0)`` .. ``work(count - 1)``, one thread each, released at the same instant.

    Returns their results in order. The first error a thread raised is raised
    here; a thread still running after ``timeout`` seconds fails the test.
    """
    results: list[Any] = [None] * count
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            start.wait(timeout=30)
            results[index] = work(index)
        except BaseException as error:  # noqa: BLE001 - raised in the caller below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    hanging = sum(thread.is_alive() for thread in threads)
    assert not hanging, f"{hanging} of {count} threads still running after {timeout:g} s"
    if errors:
        raise errors[0]
    return results


def in_parallel(sends: Sequence[Send], timeout: float = 60.0) -> list[Outcome]:
    """Send these requests at the same instant, one thread each; their outcomes in order."""
    return in_threads(len(sends), lambda index: timed(sends[index]), timeout=timeout)


def start_in_thread(send: Send) -> tuple[threading.Thread, list[Outcome]]:
    """Send one request in a thread of its own, for a test that acts while it runs.

    Returns the thread and a list that holds its outcome once the thread ended.
    """
    outcome: list[Outcome] = []
    thread = threading.Thread(target=lambda: outcome.append(timed(send)), daemon=True)
    thread.start()
    return thread, outcome


class Load:
    """``clients`` threads sending requests back to back until stop() (or ``with`` ends).

    Bounded: each thread stops after ``max_requests`` requests or
    ``max_seconds``, whichever comes first; ``send`` must carry its own
    request timeout, and stop() waits ``join_timeout`` for a request in flight.
    """

    def __init__(
        self,
        send: Send,
        clients: int,
        *,
        max_requests: int = 3000,
        max_seconds: float = 90.0,
        join_timeout: float = 40.0,
    ) -> None:
        self.send = send
        self.max_requests = max_requests
        self.deadline = time.monotonic() + max_seconds
        self.join_timeout = join_timeout
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _client(self) -> None:
        for _ in range(self.max_requests):
            if self._stop.is_set() or time.monotonic() > self.deadline:
                return
            outcome = timed(self.send)
            with self._lock:
                self._outcomes.append(outcome)

    def outcomes(self) -> list[Outcome]:
        """Every outcome so far, in the order they ended."""
        with self._lock:
            return list(self._outcomes)

    def wait_for_successes(self, count: int, since: float = 0.0, timeout: float = 60.0) -> None:
        """Poll until ``count`` requests that started at or after ``since`` succeeded."""
        wait_until(
            lambda: sum(1 for o in self.outcomes() if o.ok and o.started >= since) >= count,
            timeout=timeout,
            message=lambda: (
                f"{count} successful requests; got "
                f"{summary(o for o in self.outcomes() if o.started >= since)}"
            ),
        )

    def stop(self) -> list[Outcome]:
        """Stop the clients (each finishes the request it is sending); every outcome."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.join_timeout)
        assert not any(thread.is_alive() for thread in self._threads), "a client thread hangs"
        return self.outcomes()


class Sampler:
    """Calls ``measure`` every ``interval`` seconds in a thread; keeps the highest value.

    For bounds that must hold all along, not only at the end (e.g. the number
    of server connections during a burst). Samples for ``max_seconds`` at the
    most. An error in ``measure`` is raised when the ``with`` block ends.
    """

    def __init__(
        self, measure: Callable[[], int], interval: float = 0.005, max_seconds: float = 120.0
    ) -> None:
        self.measure = measure
        self.interval = interval
        self.max_seconds = max_seconds
        self.highest = 0
        self.samples = 0
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the sampler hangs"
        if self._error is not None and exc_info[0] is None:
            raise self._error

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                self.highest = max(self.highest, self.measure())
                self.samples += 1
                self._stop.wait(self.interval)
        except BaseException as error:  # noqa: BLE001 - raised in the test by __exit__
            self._error = error
