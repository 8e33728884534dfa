"""Coupons' arithmetic (core.coupons): zones as H3 cells, campaigns checked, the index against
brute force, the offer a user's purchases choose, coupons' expiry."""

from __future__ import annotations

import math
from typing import Any

import h3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.core.coupons import (
    Campaign,
    CampaignIndex,
    Offer,
    cell_of,
    choose_offer,
    coupon,
    expired,
    redemption_rate,
    zone_cells,
)
from tally.core.errors import ValidationError

BERLIN = (52.52, 13.405)
MINUTE = 60_000


def campaign_record(**changes: Any) -> dict[str, Any]:
    return {
        "campaign_id": "spring",
        "tenant": "acme",
        "zone": {"lat": BERLIN[0], "lon": BERLIN[1], "radius_m": 500},
        "valid_from_ms": 0,
        "valid_to_ms": 10 * MINUTE,
        "budget": 100,
        "coupon_ttl_seconds": 60,
        "offers": [
            {"offer_id": "any", "text": "10 % off"},
            {"offer_id": "shoes", "text": "20 % off shoes", "items": ["shoe-1", "shoe-2"]},
        ],
        **changes,
    }


def offset(point: tuple[float, float], metres: float, bearing: float) -> tuple[float, float]:
    """The point `metres` away from `point` towards `bearing` (radians; a flat Earth is
    close enough at these distances)."""
    lat = point[0] + metres * math.cos(bearing) / 111_320
    lon = point[1] + metres * math.sin(bearing) / (111_320 * math.cos(math.radians(point[0])))
    return lat, lon


@settings(max_examples=60)
@given(
    st.floats(-60, 60),
    st.floats(-179, 179),
    st.floats(150, 3000),
    st.floats(0, 1),
    st.floats(0, 2 * math.pi),
)
def test_a_zone_holds_the_cells_of_its_points_and_no_cell_beyond_it(
    lat: float, lon: float, radius: float, share: float, bearing: float
) -> None:
    cells = zone_cells(lat, lon, radius)
    for cell in cells:  # every cell's centre lies inside (its own cell aside)
        if cell != cell_of(lat, lon):
            centre = h3.cell_to_latlng(cell)
            assert h3.great_circle_distance((lat, lon), centre, unit="m") <= radius
    # A point well inside (a cell's width short of the edge) is in one of the zone's cells.
    edge = h3.average_hexagon_edge_length(9, unit="m")
    inner = max(radius - 2 * edge, 0) * share
    assert cell_of(*offset((lat, lon), inner, bearing)) in cells


def test_a_location_not_on_earth_is_refused() -> None:
    for lat, lon in ((91, 0), (0, 181), (math.nan, 0), (0, math.inf)):
        with pytest.raises(ValidationError, match="latitude and longitude"):
            cell_of(lat, lon)


def test_a_campaign_is_checked_field_by_field() -> None:
    campaign = Campaign.from_record(campaign_record())
    assert campaign.coupon_ttl_ms == 60_000 and len(campaign.cells) == 8  # 0.79 km²
    assert campaign.active(0) and not campaign.active(10 * MINUTE)
    wrong = {
        "campaign_id": ({"campaign_id": "a|b"}, "campaign_id must not contain"),
        "coupon id separator": ({"campaign_id": "a:b"}, "must not contain ':'"),
        "tenant": ({"tenant": "bad tenant"}, "is not a tenant name"),
        "zone": ({"zone": {"lat": 1}}, "a campaign zone is"),
        "radius": ({"zone": {"lat": 1, "lon": 1, "radius_m": 0}}, "radius_m must be > 0"),
        "times": ({"valid_to_ms": 0}, "valid_to_ms must be after"),
        "budget": ({"budget": 0}, "budget and coupon_ttl_seconds"),
        "bool": ({"budget": True}, "budget must be a int"),
        "offers": ({"offers": []}, "needs offers"),
        "offer ids": ({"offers": [{"offer_id": "a", "text": ""}] * 2}, "each with an offer_id"),
        "offer": ({"offers": [{"offer_id": "a"}]}, "an offer is"),
    }
    for name, (changes, message) in wrong.items():
        with pytest.raises(ValidationError, match=message):
            Campaign.from_record(campaign_record(**changes))
            pytest.fail(f"{name}: accepted")


ids = st.sampled_from(["c1", "c2", "c3", "c4"])
points = st.sampled_from([BERLIN, (52.5205, 13.4055), (48.8566, 2.3522)])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(), ids, st.sampled_from(["acme", "globex"]), points, st.integers(0, 5)
        ),
        max_size=12,
    ),
    points,
    st.integers(0, 6),
)
def test_the_index_finds_what_brute_force_over_the_campaigns_finds(
    changes: list[tuple[bool, str, str, tuple[float, float], int]],
    where: tuple[float, float],
    at_minute: int,
) -> None:
    index = CampaignIndex()
    current: dict[str, Campaign] = {}
    for keep, campaign_id, tenant, (lat, lon), start in changes:
        if keep:
            record = campaign_record(
                campaign_id=campaign_id,
                tenant=tenant,
                zone={"lat": lat, "lon": lon, "radius_m": 300},
                valid_from_ms=start * MINUTE,
                valid_to_ms=(start + 2) * MINUTE,
            )
            current[campaign_id] = Campaign.from_record(record)
            index.put(current[campaign_id])
        else:
            current.pop(campaign_id, None)
            index.remove(campaign_id)
    cell, at = cell_of(*where), at_minute * MINUTE
    for tenant in ("acme", "globex"):
        expected = sorted(
            (
                c
                for c in current.values()
                if c.tenant == tenant and cell in c.cells and c.active(at)
            ),
            key=lambda c: c.campaign_id,
        )
        assert index.matching(tenant, cell, at) == expected
    assert len(index) == len(current)


@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 5)))
def test_the_offer_is_the_one_whose_items_the_user_bought_most_first_on_ties(
    bought: dict[str, int],
) -> None:
    offers = [
        Offer("anyone", "5 %"),
        Offer("ab", "a or b", frozenset("ab")),
        Offer("cd", "c or d", frozenset("cd")),
    ]
    chosen = choose_offer(offers, bought)
    scores = [sum(bought.get(item, 0) for item in offer.items) for offer in offers]
    assert scores[offers.index(chosen)] == max(scores)
    assert offers.index(chosen) == scores.index(max(scores))


def test_a_coupon_names_its_user_campaign_offer_and_expiry() -> None:
    campaign = Campaign.from_record(campaign_record())
    pushed = coupon(campaign, "u1", cell_of(*BERLIN), 5 * MINUTE, {"shoe-1": 2})
    assert pushed["coupon_id"] == "spring:u1" and pushed["offer_id"] == "shoes"
    assert pushed["expires_at_ms"] == 5 * MINUTE + 60_000
    assert not expired(pushed, 5 * MINUTE + 59_999) and expired(pushed, 5 * MINUTE + 60_000)
    assert coupon(campaign, "u2", cell_of(*BERLIN), 0, {})["offer_id"] == "any"
    assert redemption_rate(0, 0) is None and redemption_rate(4, 1) == 0.25
