"""A merchant's hourly figures and their steps, against brute force (hypothesis)."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

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
