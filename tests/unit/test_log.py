"""log: the start-up line on stderr, runtime warnings on the ``djpool`` logger, one prefix."""

from __future__ import annotations

import logging
import logging.config

import pytest

from djpool import log


def test_say_writes_one_prefixed_line(capsys: pytest.CaptureFixture[str]) -> None:
    log.say("pooling database 'x'")
    assert capsys.readouterr().err == "djpool: pooling database 'x'\n"


def test_warnings_get_the_prefix_once_and_do_not_propagate(
    fresh_logger: None, capsys: pytest.CaptureFixture[str]
) -> None:
    log.warn("something to know")
    assert capsys.readouterr().err == "djpool: something to know\n"
    assert log.logger().propagate is False


def test_an_apps_logging_config_routes_the_warnings(
    fresh_logger: None, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    logging.config.dictConfig(
        {  # what Django does with settings.LOGGING
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"djpool": {"level": "WARNING", "propagate": True}},
        }
    )
    with caplog.at_level(logging.WARNING):
        log.warn("routed")
    assert [r.getMessage() for r in caplog.records if r.name == "djpool"] == ["routed"]
    assert "djpool: routed" not in capsys.readouterr().err  # no handler of ours added


def test_warn_once_warns_once_per_key(
    fresh_logger: None, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(3):
        log.warn_once("unit:key", "only once")
    assert capsys.readouterr().err.count("only once") == 1
