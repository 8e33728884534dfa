"""Logs during an outage: a repeated complaint once per interval with a count; dead letters
summarised per interval (tally.runtime.logs)."""

from __future__ import annotations

import logging

from tally.runtime.logs import SUMMARY, QuietRepeats, RejectionSummary, quiet_repeats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(
    msg: str, *args: object, level: int = logging.ERROR, **extra: object
) -> logging.LogRecord:
    made = logging.LogRecord("aiokafka.conn", level, __file__, 1, msg, args, None)
    made.__dict__.update(extra)
    return made


def test_a_repeated_error_passes_once_per_interval_then_says_how_many_were_held() -> None:
    clock = Clock()
    quiet = QuietRepeats(interval_s=60, clock=clock)
    template = "Unable connect to node with id %s: %s"
    passed = []
    for second in range(0, 150):  # 200 attempts a second, as aiokafka makes them
        clock.now = 1000.0 + second
        for _ in range(200):
            made = record(template, 1, "refused")
            if quiet.filter(made):
                passed.append((second, made.getMessage()))
    assert [second for second, _ in passed] == [0, 60, 120]
    assert passed[0][1] == "Unable connect to node with id 1: refused"
    assert passed[1][1].endswith(
        "[11,999 more ERROR lines from aiokafka in the last 60 s were not logged]"
    )


def test_a_library_repeats_by_level_tally_by_message() -> None:
    quiet = QuietRepeats(interval_s=60, clock=Clock())
    assert quiet.filter(record("Unable connect to node %s", 1))
    assert not quiet.filter(record("Heartbeat failed: %s", "x", name="aiokafka.consumer"))
    assert quiet.filter(record("Heartbeat failed: %s", "x", level=logging.WARNING))
    assert quiet.filter(record("the broker is unreachable: %s", "a", name="tally.broker.watch"))
    assert quiet.filter(record("dead letter %s", 1, name="tally.runtime.intake"))
    assert not quiet.filter(record("dead letter %s", 2, name="tally.runtime.intake"))


def test_a_line_with_its_count_formats_with_the_workers_formatter() -> None:
    """mode's formatter (the worker's) wraps a record's args in a tuple: the rewritten
    record must still format."""
    from mode.utils.logging import ExtensionFormatter

    clock = Clock()
    quiet = QuietRepeats(interval_s=60, clock=clock)
    template = "Unable connect to node with id %s: %s"
    assert quiet.filter(record(template, 1, "refused"))
    assert not quiet.filter(record(template, 1, "refused"))
    clock.now += 61
    passed = record(template, 1, "refused")
    assert quiet.filter(passed)
    shown = ExtensionFormatter(fmt="%(message)s").format(passed)
    assert shown == (
        "Unable connect to node with id 1: refused [1 more ERROR lines from aiokafka in the last "
        "61 s were not logged]"
    )


def test_progress_summaries_and_other_messages_pass() -> None:
    quiet = QuietRepeats(interval_s=60, clock=Clock())
    own = {"name": "tally.x"}
    assert quiet.filter(record("first %s", 1, **own))
    assert quiet.filter(record("another template", **own))
    assert all(quiet.filter(record("window restored %s", n, level=logging.INFO)) for n in range(5))
    assert all(quiet.filter(record("dead letters: %s", n, **{SUMMARY: True})) for n in range(5))
    assert not quiet.filter(record("first %s", 2, **own))


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_installed_once_on_every_root_handler_and_each_handler_gets_the_same_lines() -> None:
    logger = logging.getLogger("aiokafka.test-quiet")
    logger.propagate = False
    handlers = [Kept(), Kept()]
    for handler in handlers:
        logger.addHandler(handler)
    try:
        installed = quiet_repeats(logger)
        assert quiet_repeats(logger) is installed
        assert all(handler.filters == [installed] for handler in handlers)
        for n in range(5):
            logger.error("Unable connect to node %s", n)
        logger.critical("a critical line is never held back")
        logger.critical("a critical line is never held back")
        for handler in handlers:
            assert (
                handler.messages
                == ["Unable connect to node 0"] + ["a critical line is never held back"] * 2
            )
    finally:
        for handler in handlers:
            logger.removeHandler(handler)


def test_rejections_are_summarised_by_topic_and_rule_with_an_example() -> None:
    clock = Clock()
    summary = RejectionSummary(interval_s=10, clock=clock)
    assert summary.take() is None and not summary.due()
    for offset in range(1500):
        summary.note("purchases", "bad_id", f"purchases[0]@{offset}: item_id is too long")
    summary.note("metric-samples", "not_finite", "metric-samples[2]@7: value must be finite")
    assert not summary.due()
    clock.now += 10
    assert summary.due()
    line = summary.take()
    assert line == (
        "1,501 rejected in the last 10 s: purchases bad_id: 1,500 (e.g. purchases[0]@0: item_id "
        "is too long); metric-samples not_finite: 1 (e.g. metric-samples[2]@7: value must be "
        "finite)"
    )
    assert summary.take() is None
