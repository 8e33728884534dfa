"""Coupons views: a tenant's campaigns with their live figures (pushed, redeemed, the
redemption rate, coupons that expired waiting or found the budget spent), answered by the
worker owning the tenant's partition (forwarded there)."""

from __future__ import annotations

from typing import Any

from faust.web import Request, Response

from tally.app import app
from tally.core.clock import iso
from tally.core.coupons import Campaign, redemption_rate
from tally.coupons.agents import campaigns, figures, tenant_partition
from tally.coupons.tables import coupons
from tally.runtime.queries import OwnedView, one_tenant_read, routed_by_key


def described(campaign: Campaign, counted: dict[str, int]) -> dict[str, Any]:
    return {
        "campaign_id": campaign.campaign_id,
        "valid_from": iso(campaign.valid_from_ms),
        "valid_to": iso(campaign.valid_to_ms),
        "zone_cells": len(campaign.cells),
        "budget": campaign.budget,
        "budget_left": max(campaign.budget - counted["pushed"], 0),
        "coupon_ttl_seconds": campaign.coupon_ttl_ms // 1000,
        "offers": [offer.offer_id for offer in campaign.offers],
        **counted,
        "redemption_rate": redemption_rate(counted["pushed"], counted["redeemed"]),
    }


@app.page("/api/coupons/campaigns")
class CouponCampaigns(OwnedView):
    """The tenant's campaigns in effect, by id, each with its figures so far."""

    pipeline = "coupons"

    async def owned(self, request: Request) -> Response:
        tenant = one_tenant_read(request)

        async def answer() -> Response:
            partition = tenant_partition(tenant)
            held: dict[str, dict[str, int]] = {}
            found = [
                described(c, figures(partition, c.campaign_id, held))
                for c in campaigns.of_tenant(tenant)
            ]
            return self.json({"tenant": tenant, "campaigns": found})

        return await routed_by_key(coupons, tenant, self, request, answer)
