"""Offsets in flight, kept on disk across a death (tally.quarantine)."""

from __future__ import annotations

from pathlib import Path

from tally.quarantine import InFlight, InFlightRecords


def test_a_record_left_by_a_dead_process_is_found_once(tmp_path: Path) -> None:
    before = InFlightRecords(tmp_path)
    before.record("purchases", 0, InFlight(10, 20))
    before.record("purchases", 1, InFlight(5, 5, deaths=1, single=5))
    before.record("purchases", 0, InFlight(21, 30))  # the next batch replaces the record

    after = InFlightRecords(tmp_path)  # the restarted process
    assert after.left_behind("purchases", 0) == InFlight(21, 30)
    assert after.left_behind("purchases", 0) is None, "found at most once"
    assert after.left_behind("purchases", 1) == InFlight(5, 5, deaths=1, single=5)
    assert after.left_behind("metric-samples", 0) is None


def test_records_of_this_process_are_never_taken_for_a_death(tmp_path: Path) -> None:
    records = InFlightRecords(tmp_path)
    records.record("purchases", 2, InFlight(1, 9))
    assert records.left_behind("purchases", 2) is None


def test_a_record_cut_short_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "purchases.3.json").write_text('{"first": 1, "la')
    (tmp_path / "purchases.4.json").write_text('{"first": 1}')
    records = InFlightRecords(tmp_path)
    assert records.left_behind("purchases", 3) is None
    assert records.left_behind("purchases", 4) is None


def test_holds() -> None:
    assert InFlight(3, 5).holds(3) and InFlight(3, 5).holds(5)
    assert not InFlight(3, 5).holds(2) and not InFlight(3, 5).holds(6)
