"""Transaction-pooler mode: POOL_TRANSACTION_POOLER and DATABASE_CONNECTION_POOL_URL parsing,
which aliases it covers, the start-up text, the build's check, and the per-alias decisions
(server-side cursors off, prepare_threshold kept off) on a stand-in for Django's wrapper.

What the mode does against a real PgBouncer is tested in tests/test_pgbouncer.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from djpool import check, config, pooler, words
from djpool.config import ConfigError, TransactionPooler

POOL_URL = "postgres://u1x:p%2Fss@EC2-1-2-3-4.compute-1.amazonaws.com:5433/d1abc"
DATABASE_URL = "postgres://u1x:secret@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d1abc"


@pytest.mark.parametrize("raw", [None, "", "  "])
def test_unset_or_blank_means_recognise_by_address(raw: str | None) -> None:
    environ = {} if raw is None else {"POOL_TRANSACTION_POOLER": raw}
    assert config.pooler_forced(environ) is None
    assert config.transaction_pooler(environ) == TransactionPooler()


@pytest.mark.parametrize("raw", words.TRUE_WORDS + (" ON ", "Yes"))
def test_true_words_force_every_alias(raw: str) -> None:
    assert config.pooler_forced({"POOL_TRANSACTION_POOLER": raw}) is True


@pytest.mark.parametrize("raw", ["0", "false", "no", "off", " OFF "])
def test_false_words_turn_recognition_off(raw: str) -> None:
    assert config.pooler_forced({"POOL_TRANSACTION_POOLER": raw}) is False


def test_any_other_word_is_an_error_in_the_words_of_pool_disabled() -> None:
    with pytest.raises(ConfigError) as raised:
        config.pooler_forced({"POOL_TRANSACTION_POOLER": "maybe"})
    assert str(raised.value) == (
        "POOL_TRANSACTION_POOLER='maybe' is not valid: expected one of "
        "1/true/yes/on or 0/false/no/off"
    )
    assert raised.value.allowed == words.ALLOWED


def test_the_pooling_url_gives_the_address_lowercased_with_its_port() -> None:
    pooler_config = config.transaction_pooler({"DATABASE_CONNECTION_POOL_URL": POOL_URL})
    assert pooler_config == TransactionPooler(None, "ec2-1-2-3-4.compute-1.amazonaws.com", "5433")
    without_port = config.transaction_pooler(
        {"DATABASE_CONNECTION_POOL_URL": "postgres://u:p@pooler.example/db"}
    )
    assert without_port.port == "5432"


@pytest.mark.parametrize("url", ["not a url", "postgres://u:p@:5432/db", "postgres://h:99999/d"])
def test_a_pooling_url_without_a_host_is_an_error_that_hides_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config.transaction_pooler({"DATABASE_CONNECTION_POOL_URL": url})
    assert raised.value.variable == "DATABASE_CONNECTION_POOL_URL"
    assert "expected postgres://USER:PASSWORD@HOST:PORT/DBNAME" in str(raised.value)
    assert ":p@" not in str(raised.value)


def test_covers_the_pooling_address_only_unless_forced() -> None:
    by_address = TransactionPooler(None, "pooler.example", "5433")
    assert by_address.covers("pooler.example", "5433")
    assert by_address.covers("POOLER.example", 5433)  # Django's PORT may be an int
    assert not by_address.covers("pooler.example", "5432")  # the direct port
    assert not by_address.covers("db.example", "5433")
    assert not by_address.covers("", "")
    assert TransactionPooler(None, "pooler.example", "5432").covers("pooler.example", "")
    assert TransactionPooler(True).covers("anything", "1")
    assert not TransactionPooler(False, "pooler.example", "5433").covers("pooler.example", "5433")
    assert not TransactionPooler().covers("pooler.example", "5433")


def test_describe_says_which_aliases() -> None:
    assert TransactionPooler(True, "pooler.example", "5433").describe() == (
        "transaction pooler: every alias (POOL_TRANSACTION_POOLER=1)"
    )
    assert TransactionPooler(None, "pooler.example", "5433").describe() == (
        "transaction pooler: aliases on pooler.example:5433 (DATABASE_CONNECTION_POOL_URL)"
    )
    assert TransactionPooler(False, "pooler.example", "5433").describe() == ""
    assert TransactionPooler().describe() == ""


def test_load_reads_the_pooler_and_checks_it() -> None:
    loaded = config.load({"DATABASE_URL": DATABASE_URL, "DATABASE_CONNECTION_POOL_URL": POOL_URL})
    assert loaded is not None
    assert loaded.pooler.covers("ec2-1-2-3-4.compute-1.amazonaws.com", "5433")
    with pytest.raises(ConfigError, match="POOL_TRANSACTION_POOLER"):
        config.load({"DATABASE_URL": DATABASE_URL, "POOL_TRANSACTION_POOLER": "2"})


def test_the_builds_check_validates_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert check.main({"POOL_TRANSACTION_POOLER": "sometimes"}) == 1
    assert "POOL_TRANSACTION_POOLER='sometimes' is not valid" in capsys.readouterr().err
    assert check.main({"POOL_SIZE": "4", "POOL_TRANSACTION_POOLER": "yes"}) == 0
    assert capsys.readouterr().out == (
        "POOL_SIZE=4 POOL_MAX_OVERFLOW=0 POOL_TIMEOUT=10s POOL_RECYCLE=3600s "
        "POOL_TRANSACTION_POOLER=1\n"
    )
    assert check.main({"POOL_SIZE": "4"}) == 0  # unset: the line is as before
    assert capsys.readouterr().out == (
        "POOL_SIZE=4 POOL_MAX_OVERFLOW=0 POOL_TIMEOUT=10s POOL_RECYCLE=3600s\n"
    )


class Wrapper:
    """What pooler.adapt reads of Django's DatabaseWrapper: its alias and settings dict."""

    def __init__(self, alias: str, host: str, port: Any, **settings: Any) -> None:
        self.alias = alias
        self.settings_dict = {"HOST": host, "PORT": port, **settings}


@pytest.fixture
def djpool_lines(
    fresh_logger: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[[], list[str]]:
    """``djpool_lines()``: what djpool's own stderr handler printed so far (no line seen yet)."""
    from djpool import log

    monkeypatch.setattr(log, "_warned", set())
    return lambda: [
        line.removeprefix("djpool: ")
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("djpool: ")
    ]


def test_an_alias_on_the_pooling_address_gets_no_server_side_cursors(
    djpool_lines: Callable[[], list[str]],
) -> None:
    rule = TransactionPooler(None, "pooler.example", "5433")
    first, second = Wrapper("default", "pooler.example", "5433"), None
    assert pooler.adapt(first, rule) is True
    assert first.settings_dict["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert pooler.is_behind(first)
    second = Wrapper("default", "pooler.example", "5433")  # another thread's wrapper
    assert pooler.adapt(second, rule) is True
    assert djpool_lines() == [
        "database alias 'default' is behind a transaction pooler (pooler.example:5433): "
        "server-side cursors off, no DISCARD ALL at checkin"
    ]


def test_a_direct_alias_is_left_as_it_is(djpool_lines: Callable[[], list[str]]) -> None:
    rule = TransactionPooler(None, "pooler.example", "5433")
    direct = Wrapper("default", "pooler.example", "5432")
    assert pooler.adapt(direct, rule) is False
    assert "DISABLE_SERVER_SIDE_CURSORS" not in direct.settings_dict
    assert not pooler.is_behind(direct)
    assert not pooler.is_behind(Wrapper("other", "pooler.example", "5433"))  # never adapted
    assert djpool_lines() == []


def test_forced_mode_names_the_variable(djpool_lines: Callable[[], list[str]]) -> None:
    wrapper = Wrapper("replica", "127.0.0.1", 6000)
    assert pooler.adapt(wrapper, TransactionPooler(True)) is True
    assert djpool_lines() == [
        "database alias 'replica' is behind a transaction pooler "
        "(POOL_TRANSACTION_POOLER=1): server-side cursors off, no DISCARD ALL at checkin"
    ]


def test_prepare_threshold_is_overridden_with_one_warning(
    djpool_lines: Callable[[], list[str]],
) -> None:
    wrapper = Wrapper("default", "pooler.example", "5433")
    params = {"dbname": "d", "prepare_threshold": 1}
    for _ in range(3):
        assert pooler.connection_params(wrapper, params) == {
            "dbname": "d",
            "prepare_threshold": None,
        }
    assert params["prepare_threshold"] == 1  # the caller's dict is left alone
    (line,) = djpool_lines()
    assert line.startswith(
        "database alias 'default' sets OPTIONS['prepare_threshold']=1 behind a transaction "
        "pooler; djpool keeps it None"
    )


def test_prepare_threshold_none_or_absent_passes_unchanged(
    djpool_lines: Callable[[], list[str]],
) -> None:
    wrapper = Wrapper("default", "pooler.example", "5433")
    for params in ({"dbname": "d"}, {"dbname": "d", "prepare_threshold": None}):
        assert pooler.connection_params(wrapper, params) is params
    assert djpool_lines() == []
