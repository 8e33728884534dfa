"""Revoked tokens, kept on the broker: a compacted topic keyed by token id, which every worker
(and every `tally ingest` process) reads whole at start and then follows (`follow_topic`,
polled every 250 ms), so a revocation reaches all of them within a second. A
record's value says who revoked it and when; a tombstone would take a revocation back.

A compacted topic followed by every process, not a Faust GlobalTable: the field notes record
GlobalTables that do not sync across instances (faust-streaming #283), and the stateless
ingest tier has no tables at all.
"""

from __future__ import annotations

import json
import time

from tally.broker.admin import ensure_compacted_topic, follow_topic, send_record


class Revocations:
    """The ids of revoked tokens, as the topic holds them; `loaded` once what was revoked
    before this process started is in (until then no token can be trusted)."""

    def __init__(self) -> None:
        self.revoked: dict[str, dict[str, object]] = {}
        #: What a new reading of the topic has found so far (it replaces `revoked` once it
        #: caught up: until then the earlier reading still holds).
        self._reading: dict[str, dict[str, object]] | None = None
        self.loaded = False

    def __contains__(self, token_id: str) -> bool:
        return token_id in self.revoked

    def absorb(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        token_id = key.decode(errors="replace")
        try:
            detail = json.loads(value) if value is not None else None
        except ValueError:
            detail = {}
        for held in (self.revoked, self._reading):
            if held is not None and detail is None:
                held.pop(token_id, None)
            elif held is not None:
                held[token_id] = detail if isinstance(detail, dict) else {}

    def caught_up(self) -> None:
        if self._reading is not None:
            self.revoked, self._reading = self._reading, None
        self.loaded = True

    def restart(self) -> None:
        """The topic is read again from its start."""
        self._reading = {}

    async def follow(self, bootstrap_servers: list[str], topic: str, replication: int) -> None:
        """Until cancelled; creates the topic if it is missing."""
        await follow_topic(
            bootstrap_servers,
            topic,
            self.absorb,
            self.caught_up,
            poll_ms=250,
            replication=replication,
            restart=self.restart,
        )


async def revoke(
    bootstrap_servers: list[str], topic: str, replication: int, token_id: str, reason: str
) -> dict[str, object]:
    """Record `token_id` as revoked (acknowledged by the broker before this returns)."""
    await ensure_compacted_topic(bootstrap_servers, topic, replication)
    detail: dict[str, object] = {"revoked_at_ms": int(time.time() * 1000), "reason": reason}
    await send_record(bootstrap_servers, topic, token_id.encode(), json.dumps(detail).encode())
    return detail
