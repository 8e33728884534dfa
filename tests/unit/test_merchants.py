"""A merchant's hourly figures and their steps, against brute force (hypothesis)."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.core.merchants import (
    HOUR_MS,
    MAX_CHANNELS,
    OTHER_CHANNEL,
    HourFigures,
    by_step,
    merged,
    step_start,
)

#: (hour index, quantity, unit price, customer, channel)
Purchase = tuple[int, int, int, str, str]
purchases = st.lists(
    st.tuples(
        st.integers(0, 24 * 40),
        st.integers(1, 50),
        st.integers(0, 100_000),
        st.sampled_from([""] + [f"c{n}" for n in range(200)]),
        st.sampled_from(["web", "app", "store", ""]),
    ),
    max_size=300,
)
T0 = int(datetime(2026, 1, 26, tzinfo=UTC).timestamp() * 1000)  # a Monday


def figures_of(chunk: list[Purchase]) -> HourFigures:
    figures = HourFigures()
    for _, quantity, price, customer, channel in chunk:
        figures.add(quantity, price, customer, {"channel": channel} if channel else {})
    return figures


def assert_equals_brute_force(figures: HourFigures, chunk: list[Purchase]) -> None:
    answer = figures.answer()
    assert answer["orders"] == len(chunk)
    assert answer["units"] == sum(q for _, q, _, _, _ in chunk)
    assert answer["revenue_cents"] == sum(q * p for _, q, p, _, _ in chunk)
    channels: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for _, quantity, price, _, channel in chunk:
        counts = channels[channel or "unknown"]
        counts[0] += 1
        counts[1] += quantity
        counts[2] += quantity * price
    assert {
        c: [v["orders"], v["units"], v["revenue_cents"]] for c, v in answer["channels"].items()
    } == dict(channels)
    customers = len({c for _, _, _, c, _ in chunk if c})
    low, high = answer["distinct_customers_bounds"]
    assert low <= customers <= high
    assert abs(answer["distinct_customers"] - customers) <= max(1, customers * 0.03)


@given(purchases, st.randoms(use_true_random=False))
@settings(max_examples=60, deadline=None)
def test_figures_split_stored_and_merged_in_any_order_equal_brute_force(
    chunk: list[Purchase], rng: random.Random
) -> None:
    """However purchases are split (batches, hours, workers), stored and merged back, the
    figures are the whole's: integers exactly, customers within the sketch's bounds."""
    cuts = sorted(rng.sample(range(len(chunk) + 1), min(4, len(chunk) + 1)))
    parts = [chunk[a:b] for a, b in zip([0, *cuts], [*cuts, len(chunk)], strict=True)]
    stored = [HourFigures.from_record(figures_of(part).to_record()) for part in parts]
    rng.shuffle(stored)
    assert_equals_brute_force(merged(stored), chunk)


@given(purchases, st.sampled_from(["1h", "1d", "1w", "1mo"]))
@settings(max_examples=60, deadline=None)
def test_steps_merge_hours_exactly(chunk: list[Purchase], step: str) -> None:
    by_hour: dict[int, list[Purchase]] = defaultdict(list)
    for purchase in chunk:
        by_hour[T0 + purchase[0] * HOUR_MS].append(purchase)
    hours = [(hour, figures_of(part)) for hour, part in by_hour.items()]
    got = by_step(hours, step)
    truth: dict[int, list[Purchase]] = defaultdict(list)
    for hour, part in by_hour.items():
        truth[step_start(hour, step)] += part
    assert [start for start, _ in got] == sorted(truth)
    for start, figures in got:
        assert_equals_brute_force(figures, truth[start])


@given(st.integers(0, 4_000_000_000_000), st.sampled_from(["1h", "1d", "1w", "1mo"]))
def test_a_step_starts_where_the_calendar_says(ms: int, step: str) -> None:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    hour = moment.replace(minute=0, second=0, microsecond=0)
    expected = {
        "1h": hour,
        "1d": hour.replace(hour=0),
        "1w": hour.replace(hour=0) - timedelta(days=hour.weekday()),
        "1mo": hour.replace(hour=0, day=1),
    }[step]
    assert step_start(ms, step) == int(expected.timestamp() * 1000)
    with pytest.raises(ValueError, match="not one of"):
        step_start(ms, "2h")


def test_channels_past_the_cap_count_as_other_and_totals_stay_exact() -> None:
    figures = HourFigures()
    for n in range(MAX_CHANNELS + 5):
        figures.add(1, 100, f"c{n}", {"channel": f"ch{n}"})
    answer = figures.answer()
    assert len(answer["channels"]) == MAX_CHANNELS
    assert answer["channels"][OTHER_CHANNEL]["orders"] == 6
    assert sum(c["orders"] for c in answer["channels"].values()) == answer["orders"] == 21
    assert answer["average_order_cents"] == 100
    assert HourFigures().answer()["average_order_cents"] is None


@settings(max_examples=25, deadline=None)
@given(purchases, st.randoms(use_true_random=False))
def test_archived_hours_read_back_as_written_each_hour_once(
    tmp_path_factory: pytest.TempPathFactory, chunk: list[Purchase], rng: random.Random
) -> None:
    """Merchant-hours through the archive's files (several flushes, an hour sent twice, days
    compacted) read back per merchant and range exactly as their figures were."""
    from tally.archive.merchant_hours import MERCHANT_HOURS, archived_hours, final_hour
    from tally.archive.store import Archive, day_of

    archive = Archive(tmp_path_factory.mktemp("archive"), layout=MERCHANT_HOURS)
    hours: dict[tuple[str, int], list[Purchase]] = defaultdict(list)
    for purchase in chunk:
        hours[(rng.choice(["m1", "m2"]), T0 + purchase[0] * HOUR_MS)].append(purchase)
    finals = [
        final_hour({"merchant": m, "hour_ms": h, **figures_of(p).to_record()})
        for (m, h), p in sorted(hours.items())
    ]
    repeated = finals + finals[: len(finals) // 3]  # sent again after a crash: new offsets
    rng.shuffle(repeated)
    offset = 0
    while repeated:
        flush, repeated = repeated[:7], repeated[7:]
        archive.append(0, [(offset + n, hour) for n, hour in enumerate(flush)])
        offset += len(flush)
    for day in {day_of(h) for _, h in hours}:
        archive.compact(day, 0)
    start, end = T0 + 24 * HOUR_MS, T0 + 30 * 24 * HOUR_MS
    for merchant in ("m1", "m2"):
        read = archived_hours(archive, merchant, start, end)
        wanted = sorted((h, p) for (m, h), p in hours.items() if m == merchant and start <= h < end)
        assert [hour for hour, _ in read] == [hour for hour, _ in wanted]
        for (_, figures), (_, chunk_of_hour) in zip(read, wanted, strict=True):
            assert figures.to_record() == figures_of(chunk_of_hour).to_record()


def test_a_merchant_is_read_among_many_from_small_row_groups(tmp_path: Path) -> None:
    """A day's file of many merchants (two flushes, compacted) is in row groups of
    MERCHANT_ROW_GROUP_ROWS, sorted by merchant, with statistics to skip them by; one
    merchant's hours read back exactly from among the others."""
    import pyarrow.parquet as pq

    from tally.archive.merchant_hours import (
        MERCHANT_HOURS,
        MERCHANT_ROW_GROUP_ROWS,
        FinalHour,
        archived_hours,
        final_hour,
    )
    from tally.archive.store import Archive, day_of

    def final(merchant: str, hour: int, figures: HourFigures) -> FinalHour:
        return final_hour(
            {"merchant": merchant, "hour_ms": T0 + hour * HOUR_MS, **figures.to_record()}
        )

    archive = Archive(tmp_path, layout=MERCHANT_HOURS)
    other = figures_of([(0, 1, 100, "c1", "web")])
    own = [figures_of([(0, n + 1, 250, f"c{n}", "app")]) for n in range(24)]
    rows = [final(f"n{n:06d}", n % 24, other) for n in range(3 * MERCHANT_ROW_GROUP_ROWS)]
    rows += [final("n001000x", hour, figures) for hour, figures in enumerate(own)]
    half = len(rows) // 2
    archive.append(0, list(enumerate(rows[:half])))
    archive.append(0, [(half + n, row) for n, row in enumerate(rows[half:])])
    compacted = archive.compact(day_of(T0), 0)
    assert compacted is not None
    metadata = pq.ParquetFile(archive.path(compacted)).metadata
    assert metadata.num_row_groups == 4
    for group in range(metadata.num_row_groups):
        assert metadata.row_group(group).num_rows <= MERCHANT_ROW_GROUP_ROWS
        assert metadata.row_group(group).column(0).statistics.has_min_max
    read = archived_hours(archive, "n001000x", T0, T0 + 24 * HOUR_MS)
    assert [hour for hour, _ in read] == [T0 + hour * HOUR_MS for hour in range(24)]
    assert [f.to_record() for _, f in read] == [f.to_record() for f in own]


def test_a_final_hour_that_is_not_one_is_refused_with_the_reason() -> None:
    from tally.archive.merchant_hours import final_hour
    from tally.core.errors import ValidationError

    good = {"merchant": "m1", "hour_ms": T0, **HourFigures().to_record()}
    assert final_hour(good)[:2] == ("m1", T0)
    for bad, reason in (
        ({**good, "hour_ms": T0 + 1}, "start of an hour"),
        ({**good, "merchant": "a|b"}, "not a tenant name"),
        ({**good, "customers": "%%%"}, "not a final merchant-hour"),
        ({"merchant": "m1"}, "not a final merchant-hour"),
    ):
        with pytest.raises(ValidationError, match=reason):
            final_hour(bad)


def test_an_archive_inside_another_keeps_the_uri_query_at_the_end() -> None:
    from tally.archive.store import within

    assert within("/data/archive/", "merchant-hours") == "/data/archive/merchant-hours"
    assert (
        within("s3://bucket/prefix?endpoint_override=h:9000", "merchant-hours")
        == "s3://bucket/prefix/merchant-hours?endpoint_override=h:9000"
    )


@settings(max_examples=50, deadline=None)
@given(purchases, st.randoms(use_true_random=False))
def test_a_day_merges_each_final_hour_once_whatever_is_repeated(
    chunk: list[Purchase], rng: random.Random
) -> None:
    """Hours merged into their day (some again, as after a crash, in any order) give the
    day of all its purchases: exact figures, customers within the sketch's bounds."""
    from tally.core.merchants import DayFigures

    by_hour: dict[int, list[Purchase]] = defaultdict(list)
    for purchase in chunk:
        by_hour[purchase[0] % 24].append(purchase)
    arrivals = [(T0 + h * HOUR_MS, figures_of(p)) for h, p in by_hour.items()]
    arrivals += rng.sample(arrivals, len(arrivals) // 2)
    rng.shuffle(arrivals)
    day = DayFigures()
    added = [day.add_hour(hour_ms, figures) for hour_ms, figures in arrivals]
    assert sum(added) == len(by_hour)
    again = DayFigures.from_record(day.to_record())
    assert again.hours == day.hours == sum(1 << h for h in by_hour)
    assert_equals_brute_force(again.figures, [p for p in chunk])
