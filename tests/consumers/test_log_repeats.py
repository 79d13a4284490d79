"""Specification of the filter that keeps a broker outage from flooding the service's log."""

from __future__ import annotations

import logging

from xtream.consumers.log_repeats import RepeatedRecords


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(name: str = "kafka.net.manager", line: int = 248, level: int = logging.ERROR,
           msg: str = "Connection failed: %s", args: tuple = ("ECONNREFUSED",)) -> logging.LogRecord:
    return logging.LogRecord(name, level, "/site-packages/kafka/net/manager.py", line, msg, args, None)


def test_a_call_site_logs_once_per_interval_then_says_how_many_it_left_out():
    clock = Clock()
    repeats = RepeatedRecords("kafka", interval=30.0, clock=clock)
    passed = []
    for second in range(61):   # one failed attempt a second for a minute
        clock.now = float(second)
        r = record()
        if repeats.filter(r):
            passed.append((second, r.getMessage()))
    assert [s for s, _ in passed] == [0, 30, 60]
    assert passed[0][1] == "Connection failed: ECONNREFUSED"
    assert passed[1][1] == "Connection failed: ECONNREFUSED (29 more like this in the last 30 s)"


def test_other_call_sites_lower_levels_and_other_libraries_are_not_held_back():
    repeats = RepeatedRecords("kafka", interval=30.0, clock=Clock())
    assert repeats.filter(record())
    assert repeats.filter(record(line=175, msg="Metadata refresh: failed %s"))   # another call site
    assert not repeats.filter(record())
    assert repeats.filter(record(level=logging.INFO))
    assert repeats.filter(record(name="kafkaesque"))
    for _ in range(3):
        assert repeats.filter(record(name="xtream.consumers.service"))


def test_the_table_of_call_sites_is_bounded():
    repeats = RepeatedRecords("kafka", interval=30.0, max_sites=4, clock=Clock())
    for line in range(10):
        assert repeats.filter(record(line=line))
    assert len(repeats._sites) == 4
    assert repeats.filter(record(line=0))   # forgotten, so it passes again


def test_the_cli_installs_it_on_the_services_log_handler():
    from xtream.consumers import cli

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        cli._configure_logging("info", json_logs=False)
        assert any(isinstance(f, RepeatedRecords) for h in root.handlers for f in h.filters)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
