"""Social pipeline glue: raw posts → normalised, scored, by brand → minute summaries, alerts.

1. `score_posts` (social-raw): each message's standard posts (its channel's adapter, or an
   Avro SocialPost as it came; social.posts), checked, scored with VADER and mined, grouped
   by their brand's partition and handed on to social-scored-posts (one message per brand
   partition, with the raw message's origin). A message that does not decode, names no
   known channel or holds an invalid post is dead-lettered whole, with the reason.
2. `summarise_posts` (social-scored-posts): per partition, each post once (a post's id is
   seen once per channel: a repeat in another message is a duplicate, the same message
   again is a redelivery whose cells already hold it, core.applied), counted into its
   brand's minute of its channel, and, when negative enough for its reach, opened as an
   alert (once: the alert's cell exists) and sent to social-alerts. A post older than the
   hot tier behind the partition's newest is late: to late-events.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from functools import cache
from typing import Any

import orjson
from faust.types import EventT, StreamT

from tally.app import app, settings
from tally.codecs.avro import Record, check_event_time
from tally.codecs.catalog import social_post_codec
from tally.codecs.handover import HandedRecords
from tally.core.applied import Source, Stamped, holds, reach, stamp, value_of
from tally.core.clock import now_ms
from tally.core.errors import DecodeError, SchemaError, TallyError, ValidationError
from tally.core.partitioning import partition_for
from tally.core.rollups import minute_of
from tally.core.social import MinuteFigures, alert_id, open_alert
from tally.core.tenancy import letter_tenant, tenant_of
from tally.runtime.cells import read_cell, write_cell
from tally.runtime.intake import each_partition, reject
from tally.runtime.purchases import MAX_FUTURE_MS
from tally.runtime.routing import hand_over, source_of
from tally.runtime.store import delete_below, partition_key
from tally.runtime.topics import late_events
from tally.social.channels import BUILT_IN, Adapter, load_channels
from tally.social.posts import CHANNEL_HEADER, SCORED_FIELDS, scored, standard_posts
from tally.social.tables import (
    ALERT_POLICY,
    alert_key,
    alerts_topic,
    hot_from,
    minute_key,
    minute_prefix,
    seen_key,
    social_alerts,
    social_clocks,
    social_minutes,
    social_raw,
    social_scored,
    social_seen,
)
from tally.telemetry import EVENTS, SOCIAL_ALERTS, SOCIAL_POSTS

logger = logging.getLogger(__name__)

#: What the first stage hands on: scored standard posts, each with the offset of the raw
#: message that carried it and its index there (a handover holds a batch's posts).
HANDED_POSTS = HandedRecords("scored posts", (*SCORED_FIELDS, "origin_offset", "origin_index"))


@cache
def adapters() -> dict[str, Adapter]:
    """The shipped channel adapters and the deployment's own (TALLY_SOCIAL_CHANNELS)."""
    return load_channels((*BUILT_IN, *settings.social_channels))


def brand_of(post: Record) -> str:
    return tenant_of(post, settings.default_tenant)


# --- stage 1: social-raw → social-scored-posts ------------------------------------------------


def channel_of(event: EventT) -> str | None:
    raw = event.headers.get(CHANNEL_HEADER)
    if raw is None:
        return None
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


async def score_partition(events: Sequence[EventT]) -> None:
    """Each message's posts, checked and scored, each stamped with where it came from (its
    message's offset, its index in it); then the whole batch's to each brand partition in as
    few messages as they fit (a raw message holds a post or two: one handover each would
    cost a Kafka message and a Faust event per post downstream)."""
    wall = now_ms()
    by_owner: dict[int, list[tuple[int, Record]]] = {}
    classes: Counter[tuple[str, str]] = Counter()
    for event in events:
        message = event.message
        try:
            posts = standard_posts(
                message.value,
                message.key,
                channel_of(event),
                adapters(),
                social_post_codec().loads,
            )
            for post in posts:
                check_event_time("created_at_ms", post["created_at_ms"], wall, MAX_FUTURE_MS)
        except ValidationError as exc:
            await reject(event, exc, stage="validate", tenant=letter_brand(message.key))
            continue
        except (DecodeError, SchemaError) as exc:
            await reject(event, exc, stage="decode")
            continue
        for index, post in enumerate(posts):
            owner = partition_for(brand_of(post), settings.partitions)
            done = {**scored(post), "origin_offset": message.offset, "origin_index": index}
            classes[done["channel"], done["sentiment"]] += 1
            by_owner.setdefault(owner, []).append((message.offset, done))
    for (channel, sentiment), count in classes.items():
        SOCIAL_POSTS.labels(channel, sentiment).inc(count)
    for owner, theirs in by_owner.items():
        await hand_over(events[-1], owner, theirs, HANDED_POSTS, social_scored)


def letter_brand(key: bytes | None) -> str:
    """Whose a rejected raw post is, for its dead letter: the brand its key names, if usable."""
    brand = key.decode(errors="replace") if key else ""
    return letter_tenant({"tenant": brand}, settings.default_tenant)


@app.agent(social_raw)
async def score_posts(stream: StreamT) -> None:
    await each_partition(stream, score_partition)


# --- stage 2: social-scored-posts → minutes, alerts -----------------------------------------


class LatePost(TallyError):
    """A post older than the hot tier behind the newest post of its partition."""

    rule = "late"


def clock_of(partition: int) -> dict[str, Any]:
    return read_cell(social_clocks, partition_key(partition), partition) or {}


async def summarise_partition(events: Sequence[EventT]) -> None:
    """One partition's share of a batch: each post once into its minute, alerts opened once,
    late posts set aside; then minutes past the hot tier deleted locally."""
    partition = events[0].message.partition
    wall = now_ms()
    # Each post's origin: the raw partition (the handover's), its message's offset there and
    # its index in that message (core.applied keeps offsets per origin partition).
    carried = [
        (event, (source_of(event)[0], post["origin_offset"], post["origin_index"]), post)
        for event in events
        for post in await decode_handed(event)
    ]
    clock = clock_of(partition)
    newest = max([clock.get("newest_ms", 0), *(post["created_at_ms"] for _, _, post in carried)])
    horizon = hot_from(newest)
    minutes: dict[bytes, tuple[Stamped | None, MinuteFigures]] = {}
    late_by_brand: dict[str, int] = dict(clock.get("late_events") or {})
    counted = duplicates = 0
    # A batch may hold a post twice under two handovers' origins (stage 1 ran a batch again
    # with other bounds after a crash): the cells' stamps are as before the batch, so the
    # batch itself remembers what it applied.
    applied: set[tuple[Source, int, int]] = set()
    for event, (source, offset, index), post in carried:
        brand, channel = brand_of(post), post["channel"]
        minute = minute_of(post["created_at_ms"])
        if minute < horizon:
            late_by_brand[brand] = late_by_brand.get(brand, 0) + 1
            await set_aside_late(event, (source, offset), post, horizon)
            continue
        if (source, offset, index) in applied:
            continue
        applied.add((source, offset, index))
        seen = seen_key(minute, brand, channel, post["post_id"])
        first = read_cell(social_seen, seen, partition)
        if first is not None and first != [source, offset, index]:
            duplicates += 1  # the same post in another message: counted once
            continue
        if first is None:
            write_cell(social_seen, seen, [source, offset, index], partition)
        key = minute_key(minute, brand, channel)
        if key not in minutes:
            before = read_cell(social_minutes, key, partition)
            minutes[key] = (before, MinuteFigures.from_record(value_of(before)))
        before, figures = minutes[key]
        if not holds(before, offset, source):
            figures.add(post)
            counted += 1
        await maybe_alert(partition, brand, post, wall, again=first is not None)
    through = reach((source, offset) for _, (source, offset, _), _ in carried)
    for key, (before, figures) in minutes.items():
        write_cell(social_minutes, key, stamp(figures.to_record(), through, before), partition)
    write_cell(
        social_clocks,
        partition_key(partition),
        {**clock, "newest_ms": newest, "late_events": late_by_brand},
        partition,
    )
    if horizon > hot_from(clock.get("newest_ms", 0)):
        delete_below(social_minutes, partition, minute_prefix(horizon))
        delete_below(social_seen, partition, minute_prefix(horizon))
    topic = social_scored.get_topic_name()
    EVENTS.labels(topic, "counted").inc(counted)
    EVENTS.labels(topic, "duplicate").inc(duplicates)


async def decode_handed(event: EventT) -> list[Record]:
    try:
        return HANDED_POSTS.loads(event.value)
    except DecodeError as exc:
        await reject(event, exc, stage="decode")
        return []


async def maybe_alert(partition: int, brand: str, post: Record, wall_ms: int, again: bool) -> None:
    """Open an alert of the post if it is negative enough for its reach and has none yet.
    A post read again (`again`: its message came again) whose alert exists sends the
    alert's state again: if the crash that brought the message back lost the alert's
    message but kept its cell, it is not lost for good (a consumer reads the topic by alert
    id; a repeat says the same)."""
    if not ALERT_POLICY.alerts(post["compound"], post["reach"]):
        return
    key = alert_key(brand, alert_id(post["channel"], post["post_id"]))
    existing = read_cell(social_alerts, key, partition)
    if existing is not None:
        if again:
            await alerts_topic.send(key=existing["id"].encode(), value=existing)
        return
    weighted = ALERT_POLICY.weighted(post["compound"], post["reach"])
    alert = open_alert(post, weighted, brand, wall_ms)
    write_cell(social_alerts, key, alert, partition)
    await alerts_topic.send(key=alert["id"].encode(), value=alert)
    SOCIAL_ALERTS.labels("opened").inc()


async def set_aside_late(
    event: EventT, origin: tuple[Source, int], post: Record, horizon_ms: int
) -> None:
    why = LatePost(
        f"social: post {post['channel']}:{post['post_id']} of {post['created_at_ms']} is "
        f"before the hot tier's first minute {horizon_ms} (TALLY_SOCIAL_HOT_HOURS behind the "
        "newest post of its partition)"
    )
    value = orjson.dumps({name: post[name] for name in SCORED_FIELDS})
    key = brand_of(post).encode()
    partition, offset = origin
    await reject(
        event,
        why,
        stage="late",
        value=value,
        key=key,
        to=late_events,
        tenant=brand_of(post),
        origin=(social_raw.get_topic_name(), -1 if partition is None else partition, offset),
    )


@app.agent(social_scored)
async def summarise_posts(stream: StreamT) -> None:
    await each_partition(stream, summarise_partition)
