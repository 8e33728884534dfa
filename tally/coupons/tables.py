"""The coupons pipeline's topics and tables (Faust declarations; the logic is in core.coupons).

locations ─► (fresh, checked, zone cell, by user) ─► locations-by-user ─┐
purchases ─► (with a customer, by customer) ─► purchases-by-customer ───┤
                 user_purchases "<tenant>|<user>" → stamped {item: purchases}
                 ─► a coupon per campaign whose zone holds the cell ─► coupon-candidates ─┐
coupon-redemptions ─► (by tenant) ─► coupon-redemptions-by-tenant ───────────────────────┤
                 coupons "pushed|<campaign>|<user>"  → the coupon pushed
                         "redeemed|<coupon id>"      → when it was used
                         "campaign|<campaign>"       → {pushed, redeemed, expired,
                                                         over_budget, ended}
                 ─► coupon-pushes (once per user and campaign, before it expires)

A tenant's coupons and its campaigns' figures are on the tenant's partition: a campaign's
budget is one count, checked where every one of its coupons is pushed.
"""

from __future__ import annotations

from tally.app import app, settings
from tally.core.ttl import TimeToLive
from tally.runtime.routing import rekeyed_from
from tally.runtime.store import memory_bounded
from tally.runtime.topics import handover_topic, internal_topic, purchases
from tally.topics import (
    COUPON_CANDIDATES,
    COUPON_PUSHES,
    COUPON_REDEMPTIONS,
    LOCATIONS,
    LOCATIONS_BY_USER,
    PURCHASES_BY_CUSTOMER,
    REDEMPTIONS_BY_TENANT,
)

#: A location older than this when it arrives is stale (TALLY_LOCATION_TTL_SECONDS).
LOCATION_TTL = TimeToLive(settings.location_ttl_seconds * 1000)

locations = app.topic(LOCATIONS, key_type=bytes, value_type=bytes)
redemptions = app.topic(COUPON_REDEMPTIONS, key_type=bytes, value_type=bytes)
locations_by_user = handover_topic(LOCATIONS_BY_USER)
rekeyed_from(locations, locations_by_user)
purchases_by_customer = handover_topic(PURCHASES_BY_CUSTOMER)
rekeyed_from(purchases, purchases_by_customer)
coupon_candidates = handover_topic(COUPON_CANDIDATES)
rekeyed_from(locations_by_user, coupon_candidates)
redemptions_by_tenant = handover_topic(REDEMPTIONS_BY_TENANT)
rekeyed_from(redemptions, redemptions_by_tenant)
#: Every coupon pushed, JSON, keyed by user id: what the mobile gateway sends to phones.
coupon_pushes = internal_topic(COUPON_PUSHES, value_serializer="json")

user_purchases = app.Table("user_purchases", key_type=bytes, options=memory_bounded())
coupons = app.Table("coupons", key_type=bytes, options=memory_bounded())


def pushed_key(campaign_id: str, user: str) -> bytes:
    return f"pushed|{campaign_id}|{user}".encode()


def redeemed_key(coupon_id: str) -> bytes:
    return f"redeemed|{coupon_id}".encode()


def campaign_key(campaign_id: str) -> bytes:
    return f"campaign|{campaign_id}".encode()
