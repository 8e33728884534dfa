from __future__ import annotations

import dataclasses
from pathlib import Path

from tally.broker.identity import reconcile_local_state, stale_state_reason
from tally.core.deadletters import DeadLetter, producer_headers
from tally.core.errors import DecodeError
from tally.core.quarantine import IN_FLIGHT_DIR, InFlight, InFlightRecords
from tally.dlq import DeadLetterWatch, Letter, LetterFilter


def test_dead_letter_headers_round_trip() -> None:
    letter = DeadLetter.of(
        DecodeError("bad bytes"),
        stage="decode",
        topic="purchases",
        partition=3,
        offset=41,
        now_ms=5,
    )
    assert DeadLetter.from_headers(letter.headers()) == letter
    assert letter.error == "DecodeError" and letter.reason == "bad bytes"
    assert dict(letter.headers())["tally.dlq.offset"] == b"41"


def test_a_letter_keeps_its_producers_headers_and_no_routing_ones() -> None:
    letter = DeadLetter.of(DecodeError("bad"), stage="decode", topic="t", partition=1, offset=2)
    came = [("tally.channel", b"x"), ("trace-id", b"abc"), ("tally.origin", b"0:5")]
    kept = producer_headers([*came, *letter.headers()])
    assert kept == [("tally.channel", b"x"), ("trace-id", b"abc")]
    assert producer_headers({"tally.watermark": b"1:2", "a": b"b"}) == [("a", b"b")]
    assert producer_headers(None) == []


def test_dead_letters_are_counted_per_tenant_and_unknown_ones_for_operators_only() -> None:
    watch = DeadLetterWatch(["unused:1"])
    letters = [("acme", "bad_id"), ("acme", "late"), ("globex", "bad_id"), ("", "undecodable")]
    for offset, (tenant, rule) in enumerate(letters):
        meta = DeadLetter.of(DecodeError("x"), stage="validate", tenant=tenant, now_ms=offset)
        meta = dataclasses.replace(meta, rule=rule)
        watch.add(Letter(0, offset, offset, None, b"", meta))
    assert DeadLetter.from_headers(meta.headers()) == meta
    acme = watch.body("acme")
    assert (acme["tenant"], acme["total"], acme["by_rule"]) == ("acme", 2, {"bad_id": 1, "late": 1})
    assert {letter["tenant"] for letter in acme["latest"]} == {"acme"}
    assert watch.body("initech")["total"] == 0
    everything = watch.body()
    assert (everything["tenant"], everything["total"]) == ("*", 4)
    assert LetterFilter(tenant="")(Letter(0, 3, 3, None, b"", meta))


def test_state_is_trusted_only_against_the_same_broker() -> None:
    same = {"cluster_id": "c1", "changelogs": ["t-x-changelog"], "topics": {"t-x-changelog"}}
    assert stale_state_reason(remembered_cluster_id="c1", has_state=True, **same) is None
    assert stale_state_reason(remembered_cluster_id="c0", has_state=False, **same) is None
    assert "c0" in (stale_state_reason(remembered_cluster_id="c0", has_state=True, **same) or "")
    missing = {**same, "topics": set()}
    assert "t-x-changelog" in (
        stale_state_reason(remembered_cluster_id=None, has_state=True, **missing) or ""
    )


def test_reconcile_wipes_stale_tables_and_remembers_the_broker(tmp_path: Path) -> None:
    tables = tmp_path / "v1" / "tables"
    (tables / "sales_panes-0.db").mkdir(parents=True)
    changelogs = {"sales_panes": "cl", "added_later": "new-cl"}

    def reconcile(cluster_id: str) -> str | None:
        return reconcile_local_state(
            datadir=tmp_path,
            tabledir=tables,
            cluster_id=cluster_id,
            changelogs=changelogs,
            topics={"cl"},
        )

    assert reconcile("c1") is None and tables.exists(), "a new table's changelog is not missing"
    in_flight = InFlightRecords(tmp_path / IN_FLIGHT_DIR)
    in_flight.record("purchases", 0, InFlight(5, 9))
    assert reconcile("c1") is None and (tmp_path / IN_FLIGHT_DIR).exists()
    reason = reconcile("c2")
    assert reason and "c1" in reason and not tables.exists()
    assert not (tmp_path / IN_FLIGHT_DIR).exists(), "offsets of another cluster mean nothing"
    assert (tmp_path / "broker-cluster-id").read_text() == "c2"
