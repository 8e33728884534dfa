"""The social pipeline's topics and tables (Faust declarations; the logic is in core.social
and social.posts).

social-raw ─► (normalised, scored) ─► social-scored-posts (by brand: murmur2 of the tenant)
          ─► social_minutes  "<minute ms:013d>|<brand>|<channel>" → stamped MinuteFigures
          ├► social_seen     "<minute ms:013d>|<brand>|<channel>|<post id>" → the origin of
          │                  the message that first carried the post (a post counts once)
          ├► social_alerts   "<brand>|<alert id>" → the alert, its history ─► social-alerts
          └► social_clocks   "<partition>" → the newest post time, late posts per brand

Minutes and seen posts lead with their minute: those past the hot tier are one range of keys,
deleted in one go; a brand's range of minutes is one scan per query.
"""

from __future__ import annotations

from tally.app import app, settings
from tally.core.rollups import MINUTE_MS
from tally.core.social import AlertPolicy
from tally.runtime.routing import rekeyed_from
from tally.runtime.topics import handover_topic, internal_topic
from tally.topics import SOCIAL_ALERTS, SOCIAL_RAW, SOCIAL_SCORED

#: How long minutes (and the posts seen in them) are kept, by event time.
HOT_MS = settings.social_hot_hours * 3_600_000
_CHANGELOG = {"cleanup.policy": "compact,delete", "retention.ms": HOT_MS + 86_400_000}
#: Which posts become alerts (TALLY_SOCIAL_ALERT_THRESHOLD).
ALERT_POLICY = AlertPolicy(settings.social_alert_threshold)

#: Raw posts: a network's JSON (header tally.channel) or an Avro SocialPost; key = brand.
social_raw = app.topic(SOCIAL_RAW, key_type=bytes, value_type=bytes)
#: Scored posts of the brands one partition holds: JSON lists (codecs.handover).
social_scored = handover_topic(SOCIAL_SCORED)
rekeyed_from(social_raw, social_scored)
#: Every state of every alert, JSON, keyed by alert id (a replay's generation writes its own).
alerts_topic = internal_topic(SOCIAL_ALERTS, value_serializer="json")

social_minutes = app.Table("social_minutes", key_type=bytes, extra_topic_configs=_CHANGELOG)
social_seen = app.Table("social_seen", key_type=bytes, extra_topic_configs=_CHANGELOG)
#: Alerts stay (compacted) until resolved ones are cleared by an operator's tooling.
social_alerts = app.Table("social_alerts", key_type=bytes)
#: partition → {"newest_ms": the newest post time seen, "late_events": {brand: n}}.
social_clocks = app.Table("social_clocks", key_type=bytes)


def minute_key(minute_ms: int, brand: str, channel: str) -> bytes:
    return f"{minute_ms:013d}|{brand}|{channel}".encode()


def seen_key(minute_ms: int, brand: str, channel: str, post_id: str) -> bytes:
    return f"{minute_ms:013d}|{brand}|{channel}|{post_id}".encode()


def minute_prefix(minute_ms: int) -> bytes:
    """The smallest key of a minute: scans and deletes run from one's to another's."""
    return f"{minute_ms:013d}|".encode()


def split_minute_key(key: bytes) -> tuple[int, str, str]:
    """(minute ms, brand, channel) of a `minute_key`."""
    minute, brand, channel = key.decode().split("|", 2)
    return int(minute), brand, channel


def alert_key(brand: str, alert: str) -> bytes:
    return f"{brand}|{alert}".encode()


def hot_from(newest_ms: int) -> int:
    """The oldest minute kept, by the newest post time of a partition."""
    return newest_ms - newest_ms % MINUTE_MS - HOT_MS
