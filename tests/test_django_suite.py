"""Django's own database tests with the shim: the part of tests/django_suite.py that fits CI.

The labels most about connections and transactions run on Django 5.2 with
each driver, with the shim and without, against the suite's PostgreSQL. A
test that fails only with the shim fails here, with Django's traceback,
unless django_suite.KNOWN explains it; those must go on failing (xfail
strict), so that a fix in djpool shows up as an entry to delete.

Everything (all labels, Django 5.2 and 4.2, both drivers): ``make django-suite``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

import django_suite
from django_suite import LabelResult
from support.postgres import PostgresServer

CI_STACKS = ("dj52-psycopg3", "dj52-psycopg2")
CI_LABELS = ("transactions", "transaction_hooks", "select_for_update", "basic", "backends")
TIMEOUT = 600  # seconds for a test: the label's runs, both ways, maybe twice

pytestmark = pytest.mark.timeout(TIMEOUT)


@pytest.fixture(scope="module")
def label_result(pg: PostgresServer, tmp_path_factory) -> Callable[[str, str], LabelResult]:
    """``label_result(stack, label)``: the label run both ways, once per module."""
    django_suite.prepare_server(pg)
    log_dir = tmp_path_factory.mktemp("django-suite")
    done: dict[tuple[str, str], LabelResult] = {}

    def result(stack: str, label: str) -> LabelResult:
        if (stack, label) not in done:
            tests_dir = django_suite.django_tests_dir(django_suite.django_version(stack))
            done[stack, label] = django_suite.run_label(
                stack,
                label,
                server=pg,
                tests_dir=tests_dir,
                log_dir=log_dir,
                timeout=TIMEOUT - 60,
                echo=lambda line: None,
            )
        return done[stack, label]

    return result


@pytest.mark.parametrize("stack", CI_STACKS)
@pytest.mark.parametrize("label", CI_LABELS)
def test_no_django_test_fails_only_with_the_shim(label, stack, label_result):
    result = label_result(stack, label)
    with_shim, without_shim = result.with_shim, result.without_shim
    for run in (with_shim, without_shim):
        assert not run.crashed, django_suite.excerpt(run, "")
    assert with_shim.ran == without_shim.ran > 0
    assert result.shim_only == [], "\n\n".join(
        django_suite.excerpt(with_shim, problem) for problem in result.shim_only
    )


def _known_in_ci() -> list:
    return [
        pytest.param(
            stack,
            test,
            id=f"{stack}-{test}",
            marks=pytest.mark.xfail(strict=True, reason=entry.reason),
        )
        for test, entry in sorted(django_suite.KNOWN.items())
        for stack in CI_STACKS
        if test.split(".")[0] in CI_LABELS and django_suite.django_series(stack) in entry.django
    ]


@pytest.mark.parametrize(("stack", "test"), _known_in_ci())
def test_known_failure_with_the_shim(stack, test, label_result):
    """Passes (and so fails the run, strict) the day djpool fixes it: then drop it from KNOWN."""
    result = label_result(stack, test.split(".")[0])
    failing = {django_suite.rerun_target(problem) for problem in result.with_shim.failed_ids()}
    assert test not in failing, django_suite.KNOWN[test].reason
