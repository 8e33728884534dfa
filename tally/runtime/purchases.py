"""Purchases as the pipelines that read them take them in: decoded (a single purchase or an
envelope), each one checked, an invalid one dead-lettered on its own, the valid ones handed on
by partition. The sales and merchants pipelines share it: one rule for what a valid purchase is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiokafka.structs import RecordMetadata
from faust.types import EventT

from tally.app import settings
from tally.codecs.avro import Record, check_event_time, validate_purchase
from tally.codecs.catalog import purchase_batch_codec, purchase_codec, purchases_topic_codec
from tally.core.errors import TallyError, ValidationError
from tally.core.sliding import SlidingTotals
from tally.core.tenancy import letter_tenant, scoped, tenant_of
from tally.runtime.intake import decode, reject
from tally.runtime.routing import forward
from tally.runtime.topics import late_events

PURCHASE_BATCH = "tally.sales.PurchaseBatch"


def tenant_of_purchase(purchase: Record) -> str:
    """Whose a (valid) purchase is: its tenant, or the default tenant's (a merchant)."""
    return tenant_of(purchase, settings.default_tenant)


def item_of(purchase: Record) -> str:
    """The purchase's item as windows and panes key it: `scoped` by its tenant."""
    return scoped(tenant_of_purchase(purchase), purchase["item_id"])


MAX_FUTURE_MS = int(settings.max_future_seconds * 1000)


def members_of(name: str, record: Record) -> list[Record]:
    """The purchases a decoded `purchases` message carries: an envelope's, or itself."""
    return record["purchases"] if name == PURCHASE_BATCH else [record]


@dataclass(frozen=True)
class Purchases:
    """One message's purchases: how many it carried, and the valid ones."""

    envelope: bool
    carried: int
    valid: list[Record]


async def checked_purchases(
    event: EventT,
    wall_ms: int,
    check: Callable[[Record], None] | None = None,
    letters: bool = True,
) -> Purchases | None:
    """The message's valid purchases (None: it did not decode, and is dead-lettered). Each
    purchase is validated, its event time checked against the wall clock, then `check`ed
    (raising ValidationError); an invalid one is dead-lettered alone (a single message as it
    came; a member of an envelope re-encoded alone, keyed by its item) unless `letters` is
    False: another pipeline reading the same message letters it."""
    decoded = await decode(event, purchases_topic_codec(), letters)
    if decoded is None:
        return None
    name, record = decoded
    envelope = name == PURCHASE_BATCH
    members = members_of(name, record)
    valid: list[Record] = []
    for purchase in members:
        try:
            validate_purchase(purchase)
            check_event_time("event_time_ms", purchase["event_time_ms"], wall_ms, MAX_FUTURE_MS)
            if check is not None:
                check(purchase)
        except ValidationError as exc:
            if letters:
                alone = purchase_codec().dumps(purchase) if envelope else None
                key = purchase["item_id"].encode()
                whose = letter_tenant(purchase, settings.default_tenant)
                await reject(event, exc, stage="validate", value=alone, key=key, tenant=whose)
            continue
        valid.append(purchase)
    return Purchases(envelope, len(members), valid)


async def hand_on(
    event: EventT, purchases: Purchases, owner: int, theirs: Sequence[Record]
) -> Awaitable[RecordMetadata]:
    """Send `owner` the purchases of the message that are its (runtime.routing.forward, to
    the source's routed topic, read as the source is): the message as it came when they are
    all of it, else an envelope of them. Returns the delivery."""
    whole = not purchases.envelope or len(theirs) == purchases.carried
    value = None if whole else purchase_batch_codec().dumps({"purchases": list(theirs)})
    return await forward(event, owner, value)


class LateEvent(TallyError):
    """A purchase whose pane had left the window when it arrived."""

    rule = "late"


async def set_aside_late(
    window: SlidingTotals, wall_ms: int, late: Sequence[tuple[EventT, Record]], pipeline: str
) -> None:
    """Purchases whose pane had left `pipeline`'s window when they came: to `late-events`,
    each alone, the reason naming the pipeline (a purchase late for two pipelines is one
    letter from each)."""
    watermark = window.watermark(wall_ms)
    horizon = window.spec.start_ms(window.horizon(wall_ms) or 0)
    for event, purchase in late:
        why = LateEvent(
            f"{pipeline}: event time {purchase['event_time_ms']} is before the window horizon "
            f"{horizon} (watermark {watermark})"
        )
        value, key = purchase_codec().dumps(purchase), purchase["item_id"].encode()
        whose = letter_tenant(purchase, settings.default_tenant)
        await reject(event, why, stage="late", value=value, key=key, to=late_events, tenant=whose)
