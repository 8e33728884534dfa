"""Offsets in flight, kept on disk across a death (tally.core.quarantine)."""

from __future__ import annotations

from pathlib import Path

from tally.core.quarantine import RECORD_BYTES, InFlight, InFlightRecords


def test_a_record_left_by_a_dead_process_holds_until_the_partition_moves_past_it(
    tmp_path: Path,
) -> None:
    before = InFlightRecords(tmp_path)
    before.record("purchases", 0, InFlight(10, 20))
    before.record("purchases", 1, InFlight(5, 9, deaths=1, single=7))
    before.record("purchases", 0, InFlight(21, 30))  # the next batch replaces the record

    after = InFlightRecords(tmp_path)  # the restarted process
    assert after.left_behind("purchases", 0, 15) == InFlight(21, 30)
    # Redelivered in several batches: the record holds for each batch that reaches into it.
    assert after.left_behind("purchases", 0, 25) == InFlight(21, 30)
    assert after.left_behind("purchases", 0, 31) is None, "moved past it: dropped"
    assert after.left_behind("purchases", 0, 21) is None
    assert after.left_behind("purchases", 1, 0) == InFlight(5, 9, deaths=1, single=7)
    assert after.left_behind("metric-samples", 0, 0) is None


def test_a_shorter_record_written_over_a_longer_one_reads_back_alone(tmp_path: Path) -> None:
    records = InFlightRecords(tmp_path)
    records.record("purchases", 0, InFlight(10**15, 10**15 + 9, deaths=3, single=10**15 + 4))
    records.record("purchases", 0, InFlight(1, 2))
    assert (tmp_path / "purchases.0.json").stat().st_size == RECORD_BYTES, "written in place"
    assert InFlightRecords(tmp_path).left_behind("purchases", 0, 1) == InFlight(1, 2)


def test_a_quarantined_event_is_not_set_aside_twice(tmp_path: Path) -> None:
    InFlightRecords(tmp_path).record("purchases", 1, InFlight(5, 9, deaths=1, single=7))
    after = InFlightRecords(tmp_path)
    assert after.left_behind("purchases", 1, 5) == InFlight(5, 9, deaths=1, single=7)
    after.set_aside("purchases", 1)
    assert after.left_behind("purchases", 1, 5) == InFlight(5, 9, deaths=1)


def test_records_of_this_process_are_never_taken_for_a_death(tmp_path: Path) -> None:
    records = InFlightRecords(tmp_path)
    records.record("purchases", 2, InFlight(1, 9))
    assert records.left_behind("purchases", 2, 0) is None


def test_a_record_cut_short_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "purchases.3.json").write_text('{"first": 1, "la')
    (tmp_path / "purchases.4.json").write_text('{"first": 1}')
    records = InFlightRecords(tmp_path)
    assert records.left_behind("purchases", 3, 0) is None
    assert records.left_behind("purchases", 4, 0) is None


def test_holds() -> None:
    assert InFlight(3, 5).holds(3) and InFlight(3, 5).holds(5)
    assert not InFlight(3, 5).holds(2) and not InFlight(3, 5).holds(6)


def test_an_event_is_quarantined_once_it_was_alone_in_flight_at_two_deaths() -> None:
    batch = InFlight(10, 20)  # the batch in flight at the first death
    first_alone = batch.alone(14, 10, 20)
    assert not batch.quarantines(14)
    assert first_alone == InFlight(10, 20, deaths=1, single=14, alone_deaths=0)
    assert not first_alone.quarantines(14), "one death alone is not enough"
    second_alone = first_alone.alone(14, 10, 20)
    assert second_alone == InFlight(10, 20, deaths=2, single=14, alone_deaths=1)
    assert second_alone.quarantines(14)
    assert not second_alone.quarantines(15)
    assert second_alone.done() == InFlight(10, 20, deaths=2)


def test_deaths_alone_count_only_for_the_same_event() -> None:
    """A kill that lands while event 12 runs alone, then one while 13 does: neither was alone
    at two deaths, so neither is set aside."""
    after_first = InFlight(10, 20).alone(12, 10, 20)
    after_second = after_first.alone(13, 10, 20)
    assert not after_second.quarantines(13) and not after_second.quarantines(12)
    assert after_second.alone_deaths == 0
