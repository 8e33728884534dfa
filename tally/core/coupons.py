"""Location coupons: which campaigns a phone is in, which of a campaign's offers a user gets,
and whether a coupon is still worth pushing. No Faust.

Zones are H3 cells (Uber's hexagonal grid, the `h3` library): a campaign's zone, a circle,
becomes the set of resolution-9 cells (about 0.1 km² each) whose centres lie inside it, and a
location matches a campaign by one dictionary lookup of its cell. A user gets one coupon per
campaign (its id is the campaign's and the user's), carrying the offer whose items the user
bought most, and an expiry: a coupon whose expiry passed before it could be pushed is dropped,
as is a location older than its pipeline's time to live (core.ttl).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import h3

from tally.core.errors import ValidationError
from tally.core.limits import id_problem
from tally.core.tenancy import check_tenant_name

#: Zone cells: about 0.1 km², edges of about 200 m (a shop's street, not its district).
ZONE_RESOLUTION = 9
#: The largest zone: a campaign is about a shop's surroundings, not a country (and its cells
#: are held in every worker's memory).
MAX_RADIUS_M = 20_000


def cell_of(lat: float, lon: float) -> str:
    """The zone cell of a location; a ValidationError for one that is not on Earth."""
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValidationError(f"({lat}, {lon}) is not a latitude and longitude", "out_of_range")
    return str(h3.latlng_to_cell(lat, lon, ZONE_RESOLUTION))


def zone_cells(lat: float, lon: float, radius_m: float) -> frozenset[str]:
    """The cells whose centres lie within `radius_m` of the point (at least its own cell)."""
    centre = cell_of(lat, lon)
    if not 0 < radius_m <= MAX_RADIUS_M:
        raise ValidationError(
            f"zone radius_m must be > 0 and <= {MAX_RADIUS_M}, got {radius_m}", "out_of_range"
        )
    edge = h3.average_hexagon_edge_length(ZONE_RESOLUTION, unit="m")
    rings = math.ceil(radius_m / (edge * math.sqrt(3))) + 1  # centre-to-centre: edge * √3
    inside = {
        cell
        for cell in h3.grid_disk(centre, rings)
        if h3.great_circle_distance((lat, lon), h3.cell_to_latlng(cell), unit="m") <= radius_m
    }
    return frozenset(inside | {centre})


@dataclass(frozen=True)
class Offer:
    """A coupon's content: for users who bought `items` (none: anyone), `text`."""

    offer_id: str
    text: str
    items: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Campaign:
    """A shop's coupons for phones in its zone, from `valid_from_ms` to `valid_to_ms`, at most
    `budget` of them, each valid `coupon_ttl_ms` after the location that earned it."""

    campaign_id: str
    tenant: str
    cells: frozenset[str]
    valid_from_ms: int
    valid_to_ms: int
    budget: int
    coupon_ttl_ms: int
    offers: tuple[Offer, ...]

    def active(self, at_ms: int) -> bool:
        return self.valid_from_ms <= at_ms < self.valid_to_ms

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Campaign:
        """A campaign as published (JSON): every field checked, the zone turned into cells;
        a ValidationError that names what is wrong."""

        def field(name: str, kind: type) -> Any:
            value = record.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValidationError(
                    f"campaign field {name} must be a {kind.__name__}, got {value!r:.80}",
                    "bad_campaign",
                )
            return value

        campaign_id, tenant = field("campaign_id", str), record.get("tenant", "")
        problem = id_problem(campaign_id) or (
            "must not contain ':' (it separates the campaign from the user in a coupon id)"
            if ":" in campaign_id
            else None
        )
        if problem is not None:
            raise ValidationError(f"campaign_id {problem}", "bad_campaign")
        check_tenant_name(tenant)
        zone = field("zone", dict)
        try:
            lat, lon, radius = (float(zone[name]) for name in ("lat", "lon", "radius_m"))
        except (KeyError, TypeError, ValueError):
            raise ValidationError(
                'a campaign zone is {"lat": degrees, "lon": degrees, "radius_m": metres}',
                "bad_campaign",
            ) from None
        valid_from, valid_to = field("valid_from_ms", int), field("valid_to_ms", int)
        if valid_to <= valid_from:
            raise ValidationError("valid_to_ms must be after valid_from_ms", "bad_campaign")
        budget, ttl_s = field("budget", int), field("coupon_ttl_seconds", int)
        if budget < 1 or ttl_s < 1:
            raise ValidationError("budget and coupon_ttl_seconds must be >= 1", "bad_campaign")
        offers = tuple(offer_of(one) for one in field("offers", list))
        if not offers or len({offer.offer_id for offer in offers}) < len(offers):
            raise ValidationError(
                "a campaign needs offers, each with an offer_id of its own", "bad_campaign"
            )
        cells = zone_cells(lat, lon, radius)
        return cls(campaign_id, tenant, cells, valid_from, valid_to, budget, ttl_s * 1000, offers)


def offer_of(record: Any) -> Offer:
    if not (
        isinstance(record, dict)
        and isinstance(record.get("offer_id"), str)
        and isinstance(record.get("text"), str)
        and isinstance(record.get("items", []), list)
        and all(isinstance(item, str) for item in record.get("items", []))
    ):
        raise ValidationError(
            'an offer is {"offer_id": str, "text": str, "items": [item ids]}', "bad_campaign"
        )
    return Offer(record["offer_id"], record["text"], frozenset(record.get("items", [])))


class CampaignIndex:
    """The campaigns in effect, by zone cell: a location's campaigns are one lookup."""

    def __init__(self) -> None:
        self._by_id: dict[str, Campaign] = {}
        self._by_cell: dict[str, dict[str, Campaign]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, campaign_id: str) -> Campaign | None:
        return self._by_id.get(campaign_id)

    def put(self, campaign: Campaign) -> None:
        """Add a campaign, or replace the one with its id (a published change)."""
        self.remove(campaign.campaign_id)
        self._by_id[campaign.campaign_id] = campaign
        for cell in campaign.cells:
            self._by_cell.setdefault(cell, {})[campaign.campaign_id] = campaign

    def remove(self, campaign_id: str) -> None:
        old = self._by_id.pop(campaign_id, None)
        for cell in old.cells if old is not None else ():
            held = self._by_cell[cell]
            del held[campaign_id]
            if not held:
                del self._by_cell[cell]

    def of_tenant(self, tenant: str) -> list[Campaign]:
        """The tenant's campaigns, by id."""
        found = (c for c in self._by_id.values() if c.tenant == tenant)
        return sorted(found, key=lambda c: c.campaign_id)

    def matching(self, tenant: str, cell: str, at_ms: int) -> list[Campaign]:
        """The tenant's campaigns whose zone holds `cell` and that run at `at_ms`, by id."""
        found = self._by_cell.get(cell, {}).values()
        return sorted(
            (c for c in found if c.tenant == tenant and c.active(at_ms)),
            key=lambda c: c.campaign_id,
        )


def choose_offer(offers: Iterable[Offer], bought: Mapping[str, int]) -> Offer:
    """The offer whose items the user bought most of (purchases counted per item), the first
    listed on a tie: an offer without items is everyone's fallback."""
    listed = list(offers)
    scores = [sum(bought.get(item, 0) for item in offer.items) for offer in listed]
    return listed[scores.index(max(scores))]


def coupon_id(campaign_id: str, user: str) -> str:
    """One coupon per user and campaign: its id says which."""
    return f"{campaign_id}:{user}"


def coupon(
    campaign: Campaign, user: str, cell: str, located_at_ms: int, bought: Mapping[str, int]
) -> dict[str, Any]:
    """The push of `campaign`'s coupon to `user`, located in `cell` at `located_at_ms`."""
    offer = choose_offer(campaign.offers, bought)
    return {
        "coupon_id": coupon_id(campaign.campaign_id, user),
        "campaign_id": campaign.campaign_id,
        "tenant": campaign.tenant,
        "user_id": user,
        "offer_id": offer.offer_id,
        "text": offer.text,
        "zone_cell": cell,
        "located_at_ms": located_at_ms,
        "expires_at_ms": located_at_ms + campaign.coupon_ttl_ms,
    }


def expired(push: Mapping[str, Any], now_ms: int) -> bool:
    """Whether a coupon's time to live passed before it could be pushed: not pushed."""
    return now_ms >= int(push["expires_at_ms"])


def redemption_rate(pushed: int, redeemed: int) -> float | None:
    """Redeemed coupons per pushed one (None before the first push)."""
    return None if pushed == 0 else redeemed / pushed
