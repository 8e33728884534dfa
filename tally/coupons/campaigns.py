"""Published campaigns: the compacted topic `coupon-campaigns` (keyed by campaign id, one
partition), read whole by every worker and followed, so a campaign published, changed or
ended (a tombstone) takes effect without a restart. Not a Faust GlobalTable, for the reasons
the fraud models give (tally.fraud.models)."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from pathlib import Path

import orjson

from tally.broker.admin import ensure_compacted_topic, follow_topic, send_record
from tally.core.coupons import Campaign, CampaignIndex
from tally.core.errors import ValidationError

logger = logging.getLogger(__name__)


class FollowedCampaigns(CampaignIndex):
    """The campaigns as this worker has read them (one naming no tenant is
    `default_tenant`'s, as a record naming none is); `loaded` once the topic was read to the
    end it had when the worker started following it."""

    loaded = False

    def __init__(self, default_tenant: str) -> None:
        super().__init__()
        self.default_tenant = default_tenant

    def absorb(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:  # a tombstone: the campaign ended
            self.remove(key.decode(errors="replace"))
            return
        try:
            campaign = Campaign.from_record(orjson.loads(value))
            self.put(replace(campaign, tenant=campaign.tenant or self.default_tenant))
        except (ValidationError, orjson.JSONDecodeError) as exc:
            logger.error("coupon-campaigns: campaign %r is not usable, skipped: %s", key, exc)

    async def wait_loaded(self) -> None:
        """Until the topic was read to its end (after a restart, before that, a location
        would earn nothing and a coupon's campaign would look ended)."""
        while not self.loaded:
            await asyncio.sleep(0.1)

    def mark_loaded(self) -> None:
        self.loaded = True
        logger.info("coupon-campaigns read: %d campaigns in effect", len(self))

    async def follow(self, bootstrap_servers: list[str], topic: str, replication: int) -> None:
        """Until cancelled: read the topic from its start, then what comes (a broker that
        fails is retried; the campaigns read so far stay in effect)."""
        await follow_topic(
            bootstrap_servers, topic, self.absorb, self.mark_loaded, replication=replication
        )


def read_campaign_file(path: Path) -> tuple[Campaign, bytes]:
    """A campaign file, checked, and the JSON to publish; `ValidationError` saying what is
    wrong."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValidationError(f"{path}: {exc}", "bad_campaign") from None
    if not isinstance(record, dict):
        raise ValidationError(f"{path}: a campaign is a JSON object", "bad_campaign")
    return campaign_of(record)


def campaign_of(record: dict[str, object]) -> tuple[Campaign, bytes]:
    """A campaign record, checked, and the JSON to publish."""
    return Campaign.from_record(record), orjson.dumps(record)


async def publish(
    bootstrap_servers: list[str], topic: str, replication: int, campaign: Campaign, value: bytes
) -> None:
    """Publish (or change) a campaign: every worker applies it within about a second."""
    await ensure_compacted_topic(bootstrap_servers, topic, replication)
    await send_record(bootstrap_servers, topic, campaign.campaign_id.encode(), value)


async def end(bootstrap_servers: list[str], topic: str, replication: int, campaign_id: str) -> None:
    """End a campaign (a tombstone): no coupon of it is pushed from then on."""
    await ensure_compacted_topic(bootstrap_servers, topic, replication)
    await send_record(bootstrap_servers, topic, campaign_id.encode(), None)
