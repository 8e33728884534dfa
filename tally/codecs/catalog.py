"""The codecs of Tally's shipped schemas, over the deployment's schema registry: what producers,
agents and the ingest tier encode and decode with. No Faust: the stateless ingest tier and the
tools use it without building the app.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from tally.codecs.avro import (
    AvroCodec,
    RecordTypeCodec,
    load_schema,
    validate_location,
    validate_metric_batch,
    validate_order,
    validate_page_view,
    validate_purchase,
    validate_redemption,
)
from tally.codecs.log_registry import LogSchemaRegistry
from tally.codecs.registry import FileSchemaRegistry, HttpSchemaRegistry, SchemaRegistry
from tally.core.errors import ConfigurationError
from tally.settings import Settings, current_settings


@cache
def registry() -> SchemaRegistry:
    return open_registry(current_settings())


def open_registry(settings: Settings) -> SchemaRegistry:
    """`file:///dir` → the embedded registry in that directory; `topic:` (or `topic:NAME`) →
    the deployment's registry on the broker, topic `<TALLY_APP_ID>-schemas` (or NAME);
    `http(s)://...` → a client of a Confluent-compatible registry."""
    url = settings.registry_url
    parts = urlsplit(url)
    if parts.scheme == "file":
        return FileSchemaRegistry(Path(parts.path))
    if parts.scheme == "topic":
        topic = parts.path or f"{settings.app_id}-schemas"
        return LogSchemaRegistry(settings.bootstrap_servers, topic, settings.replication)
    if parts.scheme in ("http", "https"):
        return HttpSchemaRegistry(url)
    raise ConfigurationError(
        f"schema registry URL {url!r}: use file:///path for the embedded registry, topic: for "
        "the deployment's registry on the broker, or http(s)://host:port for a "
        "Confluent-compatible one"
    )


def checked_codec(subject: str, schema: str, validate: Callable[..., None]) -> AvroCodec:
    """A codec whose decoded records pass `validate`."""
    return AvroCodec(registry(), subject, load_schema(schema), validate)


@cache
def purchase_codec() -> AvroCodec:
    return checked_codec("purchases-value", "purchase", validate_purchase)


@cache
def purchase_batch_codec() -> AvroCodec:
    return AvroCodec(registry(), "tally.sales.PurchaseBatch", load_schema("purchase_batch"))


@cache
def purchases_topic_codec() -> RecordTypeCodec:
    """`purchases` carries single purchases and envelopes (record-name subjects)."""
    return RecordTypeCodec(purchase_codec(), purchase_batch_codec())


@cache
def metric_batch_codec() -> AvroCodec:
    return checked_codec("metric-samples-value", "metric_batch", validate_metric_batch)


@cache
def social_post_codec() -> AvroCodec:
    """Standard posts sent as Avro to `social-raw` (checked by the social pipeline)."""
    return AvroCodec(registry(), "social-raw-value", load_schema("social_post"))


@cache
def page_view_codec() -> AvroCodec:
    return checked_codec("page-views-value", "page_view", validate_page_view)


@cache
def location_codec() -> AvroCodec:
    return checked_codec("locations-value", "location_event", validate_location)


@cache
def redemption_codec() -> AvroCodec:
    return checked_codec("coupon-redemptions-value", "coupon_redemption", validate_redemption)


@cache
def order_codec() -> AvroCodec:
    return checked_codec("orders-value", "order", validate_order)
