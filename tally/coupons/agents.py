"""Coupons pipeline glue: locations → zones and campaigns → one coupon per user and campaign.

1. `locate_phones` (locations): a location older than TALLY_LOCATION_TTL_SECONDS when it is
   read is stale: to late-events (reason, origin), counted, never a push. A fresh one gets
   its zone cell (core.coupons) and goes to its user's partition of locations-by-user. What
   does not decode or validate (a place not on Earth) is dead-lettered.
2. `remember_purchases` (purchases): each purchase with a customer goes to the customer's
   partition of purchases-by-customer (the same partitions as locations-by-user: a user's
   locations and purchases meet).
3. `offer_coupons` (locations-by-user, purchases-by-customer): purchases are counted per user
   and item, once each (offsets kept with the counts, core.applied); a location earns, for
   each of its tenant's campaigns whose zone holds its cell and that runs at its time, a
   coupon carrying the offer the user's purchases choose, handed to the tenant's partition.
4. `push_coupons` (coupon-candidates, coupon-redemptions-by-tenant): a coupon is pushed once
   per user and campaign, while the campaign's budget lasts and before the coupon expires
   (one that expired waiting is counted and set aside on late-events). Pushes are
   acknowledged by the broker before the cells that record them are written: a crash in
   between sends the same coupon (same id, same content) again, never a second coupon
   (docs/coupons.md#known-limits for the one window where it is then counted expired). A
   redemption of a pushed coupon counts once; one of a coupon never pushed is dead-lettered.
Stages 3 and 4 start once the campaigns topic is read to its end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable, Sequence

import orjson
from aiokafka.structs import RecordMetadata
from faust.types import TP, EventT, StreamT

from tally.app import app, settings
from tally.codecs.avro import Record, check_event_time
from tally.codecs.catalog import location_codec, redemption_codec
from tally.codecs.handover import HandedRecords
from tally.core.applied import Stamped, holds, reach, stamp, value_of
from tally.core.clock import now_ms
from tally.core.coupons import cell_of, coupon, expired
from tally.core.errors import TallyError, ValidationError
from tally.core.partitioning import partition_for
from tally.core.tenancy import scoped, tenant_of
from tally.coupons.campaigns import FollowedCampaigns
from tally.coupons.tables import (
    LOCATION_TTL,
    campaign_key,
    coupon_candidates,
    coupon_pushes,
    coupons,
    locations,
    locations_by_user,
    purchases_by_customer,
    pushed_key,
    redeemed_key,
    redemptions,
    redemptions_by_tenant,
    user_purchases,
)
from tally.runtime.cells import read_cell, write_cell
from tally.runtime.expiry import set_aside_stale
from tally.runtime.intake import decode, each_partition, let_others_run, reject
from tally.runtime.purchases import MAX_FUTURE_MS, checked_purchases
from tally.runtime.record_batches import partition_count, send_records
from tally.runtime.routing import hand_over_all, source_of
from tally.runtime.topics import purchases, read_together
from tally.telemetry import EVENTS
from tally.topics import COUPON_CAMPAIGNS, COUPON_REDEMPTIONS, LOCATIONS

logger = logging.getLogger(__name__)

#: Campaigns in effect, as this worker has read them from coupon-campaigns.
campaigns = FollowedCampaigns(settings.default_tenant)


@app.task
async def follow_campaigns() -> None:
    app.add_future(
        campaigns.follow(settings.bootstrap_servers, COUPON_CAMPAIGNS, settings.replication)
    )


app.waiting_for.append(("reading the coupon campaigns", lambda: not campaigns.loaded))

HANDED_LOCATIONS = HandedRecords(
    "locations", ("tenant", "user_id", "located_at_ms", "cell", "origin_offset")
)
HANDED_PURCHASES = HandedRecords(
    "purchases", ("tenant", "customer_id", "item_id", "quantity", "origin_offset")
)
#: A redemption as its producer sent it (Avro CouponRedemption).
REDEMPTION_FIELDS = ("tenant", "coupon_id", "redeemed_at_ms")
HANDED_REDEMPTIONS = HandedRecords("redemptions", (*REDEMPTION_FIELDS, "origin_offset"))
#: What a push carries (core.coupons.coupon).
PUSHED_FIELDS = (
    "coupon_id",
    "campaign_id",
    "tenant",
    "user_id",
    "offer_id",
    "text",
    "zone_cell",
    "located_at_ms",
    "expires_at_ms",
)
#: Coupons handed to their tenant's partition, each with the locations-by-user offset that
#: earned it and where its location was first written.
HANDED_COUPONS = HandedRecords(
    "coupons", (*PUSHED_FIELDS, "origin_offset", "location_partition", "location_offset")
)


def user_partition(tenant: str, user: str) -> int:
    return partition_for(scoped(tenant, user), settings.partitions)


# --- stage 1: locations, purchases, redemptions → their owners -------------------------------


async def locate_partition(events: Sequence[EventT]) -> None:
    wall = now_ms()
    by_owner: dict[int, list[tuple[int, Record]]] = {}
    for index, event in enumerate(events, 1):
        await let_others_run(index)
        located = await decode(event, location_codec())
        if located is None:
            continue
        tenant, at = tenant_of(located, settings.default_tenant), located["located_at_ms"]
        if LOCATION_TTL.stale(at, wall):
            why = f"coupons: location of user {located['user_id'][:80]!r} "
            await set_aside_stale(event, why + LOCATION_TTL.stale_reason(at, wall), tenant=tenant)
            continue
        try:
            check_event_time("located_at_ms", at, wall, MAX_FUTURE_MS)
            cell = cell_of(located["lat"], located["lon"])
        except ValidationError as exc:
            await reject(event, exc, stage="validate", tenant=tenant)
            continue
        offset = event.message.offset
        record = {**located, "tenant": tenant, "cell": cell, "origin_offset": offset}
        by_owner.setdefault(user_partition(tenant, located["user_id"]), []).append((offset, record))
    await hand_over_all(events[-1], by_owner, HANDED_LOCATIONS, locations_by_user)
    EVENTS.labels(locations.get_topic_name(), "counted").inc(sum(map(len, by_owner.values())))


@app.agent(locations)
async def locate_phones(stream: StreamT) -> None:
    await each_partition(stream, locate_partition)


async def customers_partition(events: Sequence[EventT]) -> None:
    wall = now_ms()
    letters = not {"sales", "merchants"} & settings.pipelines  # else they letter them
    by_owner: dict[int, list[tuple[int, Record]]] = {}
    for event in events:
        carried = await checked_purchases(event, wall, letters=letters)
        for purchase in [] if carried is None else carried.valid:
            if not purchase["customer_id"]:
                continue
            tenant = tenant_of(purchase, settings.default_tenant)
            offset = event.message.offset
            record = {**purchase, "tenant": tenant, "origin_offset": offset}
            owner = user_partition(tenant, purchase["customer_id"])
            by_owner.setdefault(owner, []).append((offset, record))
    await hand_over_all(events[-1], by_owner, HANDED_PURCHASES, purchases_by_customer)


@app.agent(purchases)
async def remember_purchases(stream: StreamT) -> None:
    await each_partition(stream, customers_partition)


async def redemptions_partition(events: Sequence[EventT]) -> None:
    by_owner: dict[int, list[tuple[int, Record]]] = {}
    for event in events:
        redeemed = await decode(event, redemption_codec())
        if redeemed is None:
            continue
        tenant, offset = tenant_of(redeemed, settings.default_tenant), event.message.offset
        record = {**redeemed, "tenant": tenant, "origin_offset": offset}
        by_owner.setdefault(tenant_partition(tenant), []).append((offset, record))
    await hand_over_all(events[-1], by_owner, HANDED_REDEMPTIONS, redemptions_by_tenant)


@app.agent(redemptions)
async def route_redemptions(stream: StreamT) -> None:
    await each_partition(stream, redemptions_partition)


def tenant_partition(tenant: str) -> int:
    return partition_for(tenant, settings.partitions)


# --- stage 2: a user's purchases and locations → coupons ------------------------------------


async def offer_partition(events: Sequence[EventT]) -> None:
    """One partition's share of a batch of one topic: purchases counted, or locations'
    coupons handed to their tenants' partitions (once the campaigns are read: a location read
    before would earn nothing)."""
    await campaigns.wait_loaded()
    if events[0].message.topic == purchases_by_customer.get_topic_name():
        await count_purchases(events)
    else:
        await offer(events)


async def count_purchases(events: Sequence[EventT]) -> None:
    """Each purchase once into its user's counts per item (offsets kept with them)."""
    partition = events[0].message.partition
    counts: dict[bytes, tuple[Stamped | None, dict[str, int]]] = {}
    applied = 0
    carried = [
        (source_of(event)[0], purchase)
        for event in events
        for purchase in await decode(event, HANDED_PURCHASES) or []
    ]
    for source, purchase in carried:
        key = scoped(purchase["tenant"], purchase["customer_id"]).encode()
        if key not in counts:
            before = read_cell(user_purchases, key, partition)
            counts[key] = (before, dict(value_of(before, {})))
        before, bought = counts[key]
        if not holds(before, purchase["origin_offset"], source):
            bought[purchase["item_id"]] = bought.get(purchase["item_id"], 0) + purchase["quantity"]
            applied += 1
    through = reach((source, purchase["origin_offset"]) for source, purchase in carried)
    for key, (before, bought) in counts.items():
        write_cell(user_purchases, key, stamp(bought, through, before), partition)
    EVENTS.labels(purchases_by_customer.get_topic_name(), "counted").inc(applied)


async def offer(events: Sequence[EventT]) -> None:
    """Each location's coupons: one per campaign of its tenant whose zone holds its cell and
    that runs at its time, with the offer the user's purchases so far choose."""
    partition = events[0].message.partition
    by_owner: dict[int, list[tuple[int, Record]]] = {}
    handled = 0
    for event in events:
        for located in await decode(event, HANDED_LOCATIONS) or []:
            handled += 1
            await let_others_run(handled)
            tenant, user, at = located["tenant"], located["user_id"], located["located_at_ms"]
            found = campaigns.matching(tenant, located["cell"], at)
            if not found:
                continue
            key = scoped(tenant, user).encode()
            bought = value_of(read_cell(user_purchases, key, partition), {})
            for campaign in found:
                earned = {
                    **coupon(campaign, user, located["cell"], at, bought),
                    "origin_offset": event.message.offset,
                    # Where the location was first written: a letter about the coupon names it.
                    "location_partition": source_of(event)[0],
                    "location_offset": located["origin_offset"],
                }
                by_owner.setdefault(tenant_partition(tenant), []).append(
                    (event.message.offset, earned)
                )
    await hand_over_all(events[-1], by_owner, HANDED_COUPONS, coupon_candidates)
    EVENTS.labels(locations_by_user.get_topic_name(), "counted").inc(handled)


@app.agent(read_together(locations_by_user, purchases_by_customer))
async def offer_coupons(stream: StreamT) -> None:
    await each_partition(stream, offer_partition)


# --- stage 3: coupons pushed once, redemptions counted -------------------------------------


class UnknownCoupon(TallyError):
    """A redemption of a coupon this deployment never pushed."""

    rule = "unknown_coupon"


def figures(partition: int, campaign_id: str, held: dict[str, dict[str, int]]) -> dict[str, int]:
    """A campaign's figures, read once per batch."""
    if campaign_id not in held:
        stored = read_cell(coupons, campaign_key(campaign_id), partition) or {}
        held[campaign_id] = {
            "pushed": 0,
            "redeemed": 0,
            "expired": 0,
            "over_budget": 0,
            "ended": 0,
            **stored,
        }
    return held[campaign_id]


async def push_partition(events: Sequence[EventT]) -> None:
    """One partition's share of a batch of one topic: coupons pushed, or redemptions
    counted; then the campaigns' figures they changed."""
    await campaigns.wait_loaded()
    partition = events[0].message.partition
    held: dict[str, dict[str, int]] = {}
    if events[0].message.topic == coupon_candidates.get_topic_name():
        await push(partition, events, held)
    else:
        await count_redemptions(partition, events, held)
    for campaign_id, counted in held.items():
        write_cell(coupons, campaign_key(campaign_id), counted, partition)


async def push(partition: int, events: Sequence[EventT], held: dict[str, dict[str, int]]) -> None:
    """Each coupon pushed once, within its campaign's budget, before it expires; the pushes
    acknowledged before their cells are written (module docstring)."""
    wall = now_ms()
    pushed: dict[bytes, Record] = {}
    for event in events:
        for candidate in await decode(event, HANDED_COUPONS) or []:
            key = pushed_key(candidate["campaign_id"], candidate["user_id"])
            if key in pushed or read_cell(coupons, key, partition) is not None:
                continue  # once per user and campaign
            campaign = campaigns.get(candidate["campaign_id"])
            so_far = figures(partition, candidate["campaign_id"], held)
            if campaign is None:  # ended since the location earned it
                so_far["ended"] += 1
                continue
            if so_far["pushed"] >= campaign.budget:
                so_far["over_budget"] += 1
                continue
            if expired(candidate, wall):
                so_far["expired"] += 1
                await set_aside_expired(event, candidate, wall)
                continue
            so_far["pushed"] += 1
            pushed[key] = {name: candidate[name] for name in PUSHED_FIELDS}
    await asyncio.gather(*await send_pushes(pushed.values()))
    for key, pushing in pushed.items():
        write_cell(coupons, key, pushing, partition)
    EVENTS.labels(coupon_candidates.get_topic_name(), "counted").inc(len(pushed))


async def send_pushes(pushing: Iterable[Record]) -> list[Awaitable[RecordMetadata]]:
    """Coupons to `coupon-pushes` as JSON, keyed by user and partitioned as Kafka's default
    partitioner does (a gateway reading a user's partition gets all their coupons), in record
    batches; in transactions, through Faust's producer, one by one."""
    pushes = list(pushing)
    if app.in_transaction:
        return [await coupon_pushes.send(key=p["user_id"].encode(), value=p) for p in pushes]
    topic = coupon_pushes.get_topic_name()
    partitions = await partition_count(topic) if pushes else 1
    by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
    for push in pushes:
        user = push["user_id"]
        by_partition.setdefault(partition_for(user, partitions), []).append(
            (user.encode(), orjson.dumps(push))
        )
    return [
        delivery
        for partition, records in by_partition.items()
        for delivery in await send_records(TP(topic, partition), records)
    ]


async def set_aside_expired(event: EventT, candidate: Record, wall: int) -> None:
    """The coupon (JSON, as it would have been pushed), named by the location that earned
    it."""
    why = (
        f"coupons: coupon {candidate['coupon_id'][:120]!r} expired at "
        f"{candidate['expires_at_ms']} before it could be pushed "
        f"({wall - candidate['expires_at_ms']} ms late)"
    )
    origin = (LOCATIONS, candidate["location_partition"], candidate["location_offset"])
    await set_aside_stale(
        event,
        why,
        value=orjson.dumps({name: candidate[name] for name in PUSHED_FIELDS}),
        key=candidate["user_id"].encode(),
        tenant=candidate["tenant"],
        origin=origin,
    )


async def count_redemptions(
    partition: int, events: Sequence[EventT], held: dict[str, dict[str, int]]
) -> None:
    for event in events:
        for redeemed in await decode(event, HANDED_REDEMPTIONS) or []:
            campaign_id, _, user = redeemed["coupon_id"].partition(":")
            if read_cell(coupons, pushed_key(campaign_id, user), partition) is None:
                why = UnknownCoupon(f"coupon {redeemed['coupon_id'][:120]!r} was never pushed")
                original = {name: redeemed[name] for name in REDEMPTION_FIELDS}
                await reject(
                    event,
                    why,
                    stage="validate",
                    value=redemption_codec().dumps(original),
                    key=redeemed["coupon_id"].encode(),
                    tenant=redeemed["tenant"],
                    origin=(
                        COUPON_REDEMPTIONS,
                        source_of(event)[0] or 0,
                        redeemed["origin_offset"],
                    ),
                )
                continue
            key = redeemed_key(redeemed["coupon_id"])
            if read_cell(coupons, key, partition) is not None:
                continue  # counted once
            write_cell(coupons, key, redeemed["redeemed_at_ms"], partition)
            figures(partition, campaign_id, held)["redeemed"] += 1


@app.agent(read_together(coupon_candidates, redemptions_by_tenant))
async def push_coupons(stream: StreamT) -> None:
    await each_partition(stream, push_partition)
