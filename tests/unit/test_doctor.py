"""doctor's arithmetic: the budget of a formation against the server's limit (no server)."""

from __future__ import annotations

from djpool.doctor import Formation, ServerFacts, judge


def facts(**values: object) -> ServerFacts:
    base: dict[str, object] = {
        "version": "16.4",
        "max_connections": 20,
        "superuser_reserved": 3,
        "reserved": 0,
        "role": "app",
        "superuser": False,
        "role_limit": -1,
        "database_limit": -1,
        "tls": "TLSv1.3",
        "in_use": [],
    }
    base.update(values)
    return ServerFacts(**base)  # type: ignore[arg-type]


def test_the_role_may_open_max_connections_less_the_reserved_slots() -> None:
    assert facts().limit == 17
    assert facts(reserved=2).limit == 15
    assert facts(reserved=None).limit == 17  # before PostgreSQL 16
    assert facts(superuser=True).limit == 20
    assert facts(role_limit=10).limit == 10
    assert facts(database_limit=12, role_limit=-1).limit == 12


def test_a_formation_needs_dynos_times_processes_times_pool_size_plus_overflow() -> None:
    formation = Formation(
        per_process=5, web_dynos=2, web_concurrency=2, worker_dynos=1, worker_concurrency=3
    )
    assert formation.per_web_dyno == 10
    assert formation.total == 2 * 10 + 1 * 3 * 5
    assert formation.processes == 7


def test_a_formation_within_the_limit_fits_and_says_how_many_dynos_would() -> None:
    verdict = judge(Formation(per_process=5, web_dynos=1, web_concurrency=2), 17, 0)
    assert verdict.fits and verdict.needed == 10 and verdict.web_dynos_that_fit == 1


def test_a_formation_beyond_the_limit_gets_the_pool_size_that_fits() -> None:
    verdict = judge(Formation(per_process=5, web_dynos=3, web_concurrency=2), 17, 0)
    assert not verdict.fits and verdict.needed == 30
    assert verdict.web_dynos_that_fit == 1
    assert verdict.pool_size_that_fits == 2  # 6 processes x 2 = 12 <= 17


def test_worker_dynos_take_their_share_before_web_dynos_are_counted() -> None:
    verdict = judge(
        Formation(
            per_process=4, web_dynos=1, web_concurrency=2, worker_dynos=1, worker_concurrency=2
        ),
        17,
        1,
    )
    assert verdict.needed == 16 and verdict.fits
    assert verdict.web_dynos_that_fit == 1  # (17 - 8) // 8
    assert verdict.per_process_that_fits == 4 and verdict.pool_size_that_fits == 3


def test_when_no_pool_size_fits_it_says_so() -> None:
    verdict = judge(Formation(per_process=1, web_dynos=20, web_concurrency=1), 17, 0)
    assert not verdict.fits and verdict.pool_size_that_fits == 0
