"""Metric batches folded by minute in the offload process (metrics.prefold): what the worker
merges equals folding every sample on the event loop, and any envelope the loop would not
take whole is left to it."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.codecs.avro import AvroCodec, load_schema, validate_metric_batch
from tally.codecs.registry import FileSchemaRegistry
from tally.core.rollups import (
    MINUTE_MS,
    Cells,
    fold_samples,
    merge_cells,
    room_for_all,
    room_for_metrics,
)
from tally.metrics.prefold import prefold

T0 = 1_767_225_600_000
values = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)
sample = st.fixed_dictionaries(
    {
        "metric_id": st.sampled_from(["cpu", "mem", "disk.sda.util"]),
        "ts_ms": st.integers(T0, T0 + 5 * MINUTE_MS),
        "value": values,
    }
)
envelopes = st.lists(st.lists(sample, min_size=1, max_size=40), min_size=1, max_size=8)


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> AvroCodec:
    registry = FileSchemaRegistry(tmp_path_factory.mktemp("registry"))
    return AvroCodec(
        registry, "metric-samples-value", load_schema("metric_batch"), validate_metric_batch
    )


def batch(samples: list[dict[str, Any]], server: str = "web-1") -> dict[str, Any]:
    return {"server_id": server, "sent_at_ms": T0, "tenant": "", "samples": samples}


def prefolded(codec: AvroCodec, payloads: list[Any]) -> list[Any]:
    return prefold(payloads, codec.readings_of(payloads), codec.validate)


@given(envelopes)
def test_merging_prefolded_envelopes_equals_folding_every_sample(
    codec: AvroCodec, sent: list[list[dict[str, Any]]]
) -> None:
    folded: dict[int, Cells] = {}
    for samples in sent:
        fold_samples(samples, folded, None, T0 + 86_400_000)
    merged: dict[int, Cells] = {}
    results = prefolded(codec, [codec.dumps(batch(samples)) for samples in sent])
    for samples, result in zip(sent, results, strict=True):
        assert result is not None
        assert result.samples == len(samples)
        assert result.newest_ts == max(s["ts_ms"] for s in samples)
        assert result.oldest_minute == min(s["ts_ms"] - s["ts_ms"] % MINUTE_MS for s in samples)
        for minute, cells in result.minutes.items():
            merge_cells(merged.setdefault(minute, {}), cells)
    assert merged.keys() == folded.keys()
    for minute, cells in folded.items():
        assert merged[minute].keys() == cells.keys()
        for metric, (low, high, total, count) in cells.items():
            got = merged[minute][metric]
            assert (got[0], got[1], got[3]) == (low, high, count)
            assert math.isclose(got[2], total, rel_tol=1e-9, abs_tol=1e-3)


@pytest.mark.parametrize(
    "samples",
    [
        [{"metric_id": "cpu", "ts_ms": T0, "value": float("nan")}],
        [{"metric_id": "cpu", "ts_ms": T0, "value": float("inf")}],
        [{"metric_id": "bad|id", "ts_ms": T0, "value": 1.0}],
        [{"metric_id": "cpu", "ts_ms": 0, "value": 1.0}],
    ],
    ids=["nan", "infinite", "unusable metric id", "no time"],
)
def test_an_envelope_with_an_invalid_sample_is_left_to_the_worker(
    codec: AvroCodec, samples: list[dict[str, Any]]
) -> None:
    """The worker rejects the invalid sample alone, with its reason, and folds the rest."""
    good = [{"metric_id": "mem", "ts_ms": T0, "value": 2.0}]
    assert prefolded(codec, [codec.dumps(batch(good + samples + good))]) == [None]


def test_an_empty_envelope_is_left_to_the_worker(codec: AvroCodec) -> None:
    assert prefolded(codec, [codec.dumps(batch([]))]) == [None]


def test_messages_that_do_not_decode_or_validate_are_left_to_the_worker(codec: AvroCodec) -> None:
    good = codec.dumps(batch([{"metric_id": "cpu", "ts_ms": T0, "value": 1.0}]))
    payloads = [
        None,  # a tombstone
        b"not framed",
        b"\x00\x00\x00\x99\x99" + good[5:],  # an id the registry does not have
        good + b"\x00",  # trailing bytes
        good[:-3],  # cut short
        codec.dumps(batch([{"metric_id": "cpu", "ts_ms": T0, "value": 1.0}], server="web|1")),
        good,
    ]
    results = prefolded(codec, payloads)
    assert results[:6] == [None] * 6
    assert results[6] is not None and results[6].minutes == {T0: {"cpu": [1.0, 1.0, 1.0, 1]}}


def test_an_older_writer_schema_is_resolved_to_the_workers(codec: AvroCodec) -> None:
    """A batch written before the tenant field existed reads with the default tenant."""
    old_schema = load_schema("metric_batch")
    old_schema["fields"] = [f for f in old_schema["fields"] if f["name"] != "tenant"]
    old = AvroCodec(codec.registry, "old-metric-samples-value", old_schema)
    payload = old.dumps(
        {
            "server_id": "web-1",
            "sent_at_ms": T0,
            "samples": [{"metric_id": "cpu", "ts_ms": T0, "value": 3.0}],
        }
    )
    (result,) = prefolded(codec, [payload])
    assert result is not None and (result.server_id, result.tenant) == ("web-1", "")


@given(
    st.sets(st.integers(0, 12)),
    st.sets(st.integers(0, 12)),
    st.sets(st.integers(0, 12)),
    st.integers(0, 16),
)
def test_room_for_a_whole_envelope_is_room_for_each_of_its_metrics_in_turn(
    known: set[int], cells: set[int], more: set[int], cap: int
) -> None:
    def named(ids: set[int]) -> Cells:
        return {f"m{n}": [1.0, 1.0, 1.0, 1] for n in ids}

    admits = room_for_metrics(lambda minute: named(known), cap)
    taken = named(cells)
    each = True
    for metric in named(more):
        if metric not in taken and not admits(0, metric, taken):
            each = False
            break
        taken[metric] = [1.0, 1.0, 1.0, 1]
    assert room_for_all(named(known), named(cells), named(more), cap) == each
