"""Prometheus counters the pipelines update (per batch, not per event); served at /metrics."""

from __future__ import annotations

from prometheus_client import Counter

EVENTS = Counter(
    "tally_events",
    "Events by source topic and outcome: counted, late, or rejected (dead-lettered).",
    ["topic", "outcome"],
)
DEAD_LETTERS = Counter(
    "tally_dead_letters",
    "Messages sent to a dead-letter or late-events topic, by destination and error class.",
    ["destination", "error"],
)
