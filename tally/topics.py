"""The name of every topic Tally reads or writes: the data flow in one file, no Faust.

    producers ─► PURCHASES ─► sales ─► SALES_CANDIDATES ─► the merged top-K
              │            └► merchants (re-keyed) ─► MERCHANT_PURCHASES ─► merchant hours
              ├► METRIC_SAMPLES ─► metrics ─► METRIC_PARTIALS ─► the by-metric index
              │                           └► (METRIC_TICKS) ─► METRIC_FINAL_MINUTES ─► archive
              ├► ORDERS ─► fraud (by customer, card, device) ─► FRAUD_ENTITY_ORDERS ─►
              │            FRAUD_FEATURES ─► decided by the model in FRAUD_MODELS ─►
              │            FRAUD_DECISIONS, FRAUD_AUDIT, the review queue
              ├► SOCIAL_RAW ─► social (normalised, scored, by brand) ─► SOCIAL_SCORED ─► minute
              │                   summaries, alert queue ─► SOCIAL_ALERTS
              ├► PAGE_VIEWS ─► recommendations (by session) ─► SESSION_VIEWS ─► the session's
              │                items (time to live) ─► CO_VIEW_CHANGES ─► co-views by item
              ├► LOCATIONS ─► coupons (by user; stale ones dropped) ─► LOCATIONS_BY_USER ─►
              │               zones, campaigns (COUPON_CAMPAIGNS), the user's purchases
              │               (PURCHASES ─► PURCHASES_BY_CUSTOMER) ─► COUPON_CANDIDATES ─►
              │               once per user and campaign, budgets ─► COUPON_PUSHES
              └► COUPON_REDEMPTIONS ─► REDEMPTIONS_BY_TENANT ─► redemption rates
    on another partition than its key's ─► ROUTED[topic] ─► the same pipeline, at the owner
    anything rejected ─► DEAD_LETTERS; anything late ─► LATE_EVENTS

The Faust declarations are `tally.runtime.topics` (shared) and each pipeline's `tables`
module; internal topics get a generation suffix there (`Settings.generation_topic`).
"""

from __future__ import annotations

#: Purchases (Avro `tally.sales.Purchase` or `PurchaseBatch`), keyed by item id.
PURCHASES = "purchases"
#: Metric batches (Avro `tally.metrics.MetricBatch`: one server, many samples), by server id.
METRIC_SAMPLES = "metric-samples"
#: Social posts as their networks give them (JSON; the `tally.channel` header names the
#: network) or standard ones (Avro `tally.social.SocialPost`); keyed by brand (the tenant).
SOCIAL_RAW = "social-raw"
#: Orders to decide (Avro `tally.fraud.Order`), keyed by customer id.
ORDERS = "orders"
#: Shoppers' page views and clicks (Avro `tally.recommendations.PageView`), keyed by session.
PAGE_VIEWS = "page-views"
#: Phones' locations from the mobile gateway (Avro `tally.coupons.LocationEvent`), by user.
LOCATIONS = "locations"
#: Coupons used (Avro `tally.coupons.CouponRedemption`), keyed by coupon id.
COUPON_REDEMPTIONS = "coupon-redemptions"
#: The topics producers write to (created up front); a replay reads them again.
SOURCE_TOPICS = (
    PURCHASES,
    METRIC_SAMPLES,
    SOCIAL_RAW,
    ORDERS,
    PAGE_VIEWS,
    LOCATIONS,
    COUPON_REDEMPTIONS,
)
#: Source messages that came on another partition than their key's murmur2 one (a producer
#: with another partitioner: librdkafka's CRC32, random), forwarded to the owner partition of
#: this topic with their origin in a header (`tally.core.partitioning.ORIGIN_HEADER`).
ROUTED = {PURCHASES: "purchases-routed", METRIC_SAMPLES: "metric-samples-routed"}
#: Rejected messages and rows: original bytes, why and where from in `tally.dlq.*` headers.
DEAD_LETTERS = "dead-letters"
#: Events that arrived after their window closed.
LATE_EVENTS = "late-events"
#: Each purchases partition's top-K, to the one worker that merges them (one partition).
SALES_CANDIDATES = "sales-topk-candidates"
#: Servers' whole minute rollups, re-keyed by metric for the by-metric index.
METRIC_PARTIALS = "metric-rollups-by-metric"
#: A tick per owned metric-samples partition per second: idle time passes as stream events.
METRIC_TICKS = "metric-ticks"
#: Every final (server, minute), once: the cold tier's input.
METRIC_FINAL_MINUTES = "metric-rollups-1m"
#: Purchases re-keyed by merchant (the tenant): one envelope per purchases message and
#: merchant partition, its origin in a header, so a merchant's whole history is one partition.
MERCHANT_PURCHASES = "merchant-purchases"
#: Every merchant-hour that left the window (final), once: the merchants' cold tier's input.
MERCHANT_FINAL_HOURS = "merchant-hours-1h"
#: Scored standard posts re-keyed by brand: one message per raw message and brand partition.
SOCIAL_SCORED = "social-scored-posts"
#: Alerts for customer care: every state of every alert (opened, acknowledged, resolved),
#: JSON, keyed by alert id ("<channel>:<post id>").
SOCIAL_ALERTS = "social-alerts"
#: Each order as its customer's, its card's and its device's: one message per batch and
#: entity partition (the entity's id hashed), each order with its role.
FRAUD_ENTITY_ORDERS = "fraud-entity-orders"
#: Each entity's features of an order, to the merchant's partition, where the three meet.
FRAUD_FEATURES = "fraud-features"
#: Every decision, once (JSON, keyed by order id): the model's, stamped with its version and
#: the features it used.
FRAUD_DECISIONS = "fraud-decisions"
#: Every decision, automatic or human, appended (JSON): the audit log.
FRAUD_AUDIT = "fraud-audit"
#: Page views re-keyed by session (murmur2 of "<tenant>|<session>"), whatever the producer's
#: partitioner: one message per page-views message and session partition.
SESSION_VIEWS = "page-views-by-session"
#: Changes to item rows' co-view counts (a pair completed or moved by a view), to the row
#: item's partition.
CO_VIEW_CHANGES = "co-view-changes"
#: Fresh locations re-keyed by user (murmur2 of "<tenant>|<user>"), with their zone cell.
LOCATIONS_BY_USER = "locations-by-user"
#: Purchases with a customer, re-keyed by customer: the user's history beside their locations.
PURCHASES_BY_CUSTOMER = "purchases-by-customer"
#: Coupons a location earned, to the tenant's partition, where each is pushed once.
COUPON_CANDIDATES = "coupon-candidates"
#: Redemptions re-keyed by tenant, beside the coupons pushed.
REDEMPTIONS_BY_TENANT = "coupon-redemptions-by-tenant"
#: Coupons pushed to the mobile gateway (JSON, keyed by user id), each with its expiry.
COUPON_PUSHES = "coupon-pushes"
#: Published campaigns (JSON, keyed by campaign id; compacted, one partition; a tombstone
#: ends one), read whole by every worker.
COUPON_CAMPAIGNS = "coupon-campaigns"
#: Published models (JSON, keyed by version; compacted, one partition), read whole by every
#: worker: a new version takes effect without a restart.
FRAUD_MODELS = "fraud-models"
