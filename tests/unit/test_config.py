"""config: POOL_* parsing and bounds, the true/false words, redact_url, the build's check."""

from __future__ import annotations

import pytest

from djpool import check, config, words
from djpool.config import ConfigError, PoolSettings


def test_unset_and_blank_variables_give_the_defaults_of_pool_settings() -> None:
    assert config.pool_settings({}) == PoolSettings()
    blank = {
        name: "  " for name in ("POOL_SIZE", "POOL_MAX_OVERFLOW", "POOL_TIMEOUT", "POOL_RECYCLE")
    }
    assert config.pool_settings(blank) == PoolSettings()


def test_values_are_parsed_with_blanks_around_them() -> None:
    settings = config.pool_settings(
        {"POOL_SIZE": " 12 ", "POOL_MAX_OVERFLOW": "3", "POOL_TIMEOUT": "2.5", "POOL_RECYCLE": "0"}
    )
    assert settings == PoolSettings(size=12, max_overflow=3, timeout=2.5, recycle=0)
    assert settings.describe() == (
        "POOL_SIZE=12 POOL_MAX_OVERFLOW=3 POOL_TIMEOUT=2.5s POOL_RECYCLE=0s"
    )


@pytest.mark.parametrize(
    ("variable", "good", "bad", "allowed"),
    [
        (
            "POOL_SIZE",
            ["1", "1000"],
            ["0", "1001", "-1", "2.5", "abc"],
            "expected a whole number from 1 to 1000",
        ),
        (
            "POOL_MAX_OVERFLOW",
            ["0", "1000"],
            ["-1", "1001", "x"],
            "expected a whole number from 0 to 1000",
        ),
        (
            "POOL_TIMEOUT",
            ["0.001", "3600"],
            ["0", "-1", "3600.5", "nan", "inf", "soon"],
            "expected a number of seconds greater than 0 and at most 3600",
        ),
        (
            "POOL_RECYCLE",
            ["0", "31536000"],
            ["-1", "31536001", "1h"],
            "expected a whole number from 0 to 31536000",
        ),
    ],
)
def test_bounds(variable: str, good: list[str], bad: list[str], allowed: str) -> None:
    for value in good:
        config.pool_settings({variable: value})
    for value in bad:
        with pytest.raises(ConfigError) as raised:
            config.pool_settings({variable: value})
        assert str(raised.value) == f"{variable}={value!r} is not valid: {allowed}"


@pytest.mark.parametrize("raw", ["1", "true", " YES ", "On"])
def test_true_words(raw: str) -> None:
    assert words.truth(raw) is True
    assert config.is_disabled({"POOL_DISABLED": raw}) is True


@pytest.mark.parametrize("raw", [None, "", " ", "0", "false", "No", "OFF"])
def test_false_words(raw: str | None) -> None:
    assert words.truth(raw) is False
    environ = {} if raw is None else {"POOL_DISABLED": raw}
    assert config.is_disabled(environ) is False


def test_any_other_word_is_an_error_that_lists_the_words() -> None:
    assert words.truth("maybe") is None
    with pytest.raises(ConfigError) as raised:
        config.is_disabled({"POOL_DISABLED": "maybe"})
    assert str(raised.value) == (
        "POOL_DISABLED='maybe' is not valid: expected one of 1/true/yes/on or 0/false/no/off"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgres://user:hunter2@db.example.com:5432/shop",
            "'postgres://user:***@db.example.com:5432/shop'",
        ),
        ("postgres://user@db.example.com/shop", "'postgres://user@db.example.com/shop'"),
        ("postgres://db.example.com/shop", "'postgres://db.example.com/shop'"),
        ("postgres://user:@host/db", "'postgres://user:***@host/db'"),
        ("not a url at all", "<16 characters, not shown>"),
        ("postgres://u:hunter2@host:notaport/db", "<37 characters, not shown>"),
        ("hunter2", "<7 characters, not shown>"),
    ],
)
def test_redact_url_never_shows_the_password(url: str, shown: str) -> None:
    assert config.redact_url(url) == shown
    assert "hunter2" not in config.redact_url(url)


def test_load_is_none_without_url_or_when_disabled() -> None:
    assert config.load({}) is None
    assert config.load({"DATABASE_URL": "  "}) is None
    assert config.load({"DATABASE_URL": "postgres://u:p@h/db", "POOL_DISABLED": "on"}) is None


def test_load_checks_the_pool_variables_before_the_url() -> None:
    with pytest.raises(ConfigError) as raised:
        config.load({"DATABASE_URL": "mysql://u:p@h/db", "POOL_SIZE": "0"})
    assert raised.value.variable == "POOL_SIZE"


def test_check_answers_the_builds_question_in_the_runtimes_words(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert check.main({"POOL_DISABLED": " Yes"}, ["--pooling-disabled"]) == 0
    assert check.main({"POOL_DISABLED": "off"}, ["--pooling-disabled"]) == 1
    assert check.main({}, ["--pooling-disabled"]) == 1
    assert check.main({"POOL_DISABLED": "maybe"}, ["--pooling-disabled"]) == 1
    assert "POOL_DISABLED='maybe' is not valid" in capsys.readouterr().err
    assert check.main({}, ["--what"]) == 2


def test_check_prints_the_settings_or_the_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert check.main({"POOL_SIZE": "7"}) == 0
    assert capsys.readouterr().out.startswith("POOL_SIZE=7 ")
    assert check.main({"POOL_SIZE": "0"}) == 1
    assert capsys.readouterr().err.startswith("POOL_SIZE='0' is not valid")
