"""Rank-zero logging: a stage's lines appear once per run, plain, on stdout; other ranks say nothing."""

from __future__ import annotations

import logging

import pytest

from visarl.core.log import RANK_VARIABLES, configure_console, get_logger, process_rank


@pytest.fixture
def rank_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_lines_are_plain_messages_on_stdout_once(rank_zero, capsys):
    first, again = configure_console(), configure_console()
    assert first is again  # configured once, however often fit runs
    get_logger("visarl.test_log").info("collect: wrote 10 steps")
    assert capsys.readouterr().out == "collect: wrote 10 steps\n"


@pytest.mark.parametrize("variable", RANK_VARIABLES)
def test_other_ranks_say_nothing(rank_zero, monkeypatch, capsys, caplog, variable):
    configure_console()
    log = get_logger("visarl.test_log")
    monkeypatch.setenv(variable, "1")
    assert process_rank() == 1
    with caplog.at_level(logging.INFO, logger="visarl"):
        log.info("rl: resumed")
        log.warning("rl: something odd")
    assert capsys.readouterr().out == "" and caplog.records == []
    monkeypatch.setenv(variable, "0")
    with caplog.at_level(logging.INFO, logger="visarl"):
        log.info("rl: resumed")
    assert capsys.readouterr().out == "rl: resumed\n" and len(caplog.records) == 1


def test_a_rank_that_is_not_a_number_is_not_a_rank(rank_zero, monkeypatch):
    monkeypatch.setenv("RANK", "")
    monkeypatch.setenv("LOCAL_RANK", "x")
    assert process_rank() == 0
