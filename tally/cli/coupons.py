"""`tally coupons publish-campaign FILE` and `tally coupons end-campaign ID`: the coupons
pipeline's campaigns (tally.coupons.campaigns), followed by every worker without a restart."""

from __future__ import annotations

from pathlib import Path

import click
from aiokafka.errors import KafkaError
from faust.cli import AppCommand, argument

from tally.app import app, settings
from tally.cli.errors import fail
from tally.core.clock import iso
from tally.core.errors import BrokerError, ValidationError
from tally.coupons.campaigns import end, publish, read_campaign_file
from tally.topics import COUPON_CAMPAIGNS


@app.command(
    argument("action", type=click.Choice(["publish-campaign", "end-campaign"])),
    argument("target"),
)
async def coupons(self: AppCommand, action: str, target: str) -> None:
    """publish-campaign FILE: publish (or change) the campaign in FILE (JSON: campaign_id,
    tenant, zone {lat, lon, radius_m}, valid_from_ms, valid_to_ms, budget,
    coupon_ttl_seconds, offers [{offer_id, text, items}]; see docs/coupons.md).
    end-campaign ID: no coupon of campaign ID is pushed from then on."""
    servers, replication = settings.bootstrap_servers, settings.replication
    try:
        if action == "end-campaign":
            await end(servers, COUPON_CAMPAIGNS, replication, target)
            print(f"ended campaign {target}: every worker stops pushing its coupons")
            return
        try:
            campaign, value = read_campaign_file(Path(target))
        except ValidationError as exc:
            fail(f"{target}: {exc}")
        await publish(servers, COUPON_CAMPAIGNS, replication, campaign, value)
    except (KafkaError, BrokerError, OSError) as exc:
        fail(f"could not reach the broker at {settings.broker} ({type(exc).__name__}: {exc})")
    print(
        f"published campaign {campaign.campaign_id} ({campaign.tenant or 'default tenant'}): "
        f"{len(campaign.cells)} zone cells, {iso(campaign.valid_from_ms)} to "
        f"{iso(campaign.valid_to_ms)}, budget {campaign.budget}"
    )
