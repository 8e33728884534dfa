"""`POST /api/ingest/{endpoint}` over HTTP: one aiohttp handler for the worker's web server
and for the stateless `tally ingest` process.

Statuses: 202 (rows checked; accepted ones are in Kafka, rejected ones are in dead-letters,
each listed with index and reason), 400 (no readable row at all), 404 (no such endpoint),
413 (over TALLY_INGEST_MAX_BYTES), 503 (the broker did not acknowledge: retry). Every refused
body is dead-lettered too, so nothing sent is lost without a trace.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from tally.errors import SchemaError, TallyError
from tally.ingest.gateway import (
    DEAD_LETTER_MAX_BYTES,
    BrokerUnavailable,
    IngestGateway,
    endpoints,
    new_request_id,
)
from tally.ingest.rows import NDJSON_TYPES, BodyTooLarge, UnreadableBody
from tally.settings import Settings
from tally.telemetry import INGEST_REQUESTS, INGEST_SECONDS
from tally.topics import metric_batch_codec, purchase_batch_codec

#: Seconds a client should wait before retrying after a 503.
RETRY_AFTER_S = 5


def make_gateway(settings: Settings) -> IngestGateway:
    """The gateway of this process, encoding with the registry's codecs."""
    return IngestGateway(settings, endpoints(settings, purchase_batch_codec, metric_batch_codec))


@dataclass(frozen=True)
class Body:
    """A request body; over the limit only its head is read (enough for a dead letter)."""

    data: bytes
    size: int  # bytes declared or read; over the limit: at least this many
    complete: bool


async def read_body(request: web.Request, limit: int) -> Body:
    """The body when it is at most `limit` bytes, else its head. aiohttp undoes gzip;
    `UnreadableBody` when that fails (not gzip after all, truncated)."""
    declared = request.content_length
    chunks: list[bytes] = []
    size = 0
    try:
        if declared is not None and declared > limit:
            while size < DEAD_LETTER_MAX_BYTES and (chunk := await request.content.read(65536)):
                chunks.append(chunk)
                size += len(chunk)
            return Body(b"".join(chunks)[:DEAD_LETTER_MAX_BYTES], declared, complete=False)
        async for chunk in request.content.iter_chunked(64 * 1024):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return Body(b"".join(chunks)[:DEAD_LETTER_MAX_BYTES], size, complete=False)
    except RequestPayloadError as exc:
        raise UnreadableBody(
            f"the body cannot be read: {str(exc).splitlines()[-1].strip()}"
        ) from exc
    return Body(b"".join(chunks), size, complete=True)


def too_large(body: Body, limit: int) -> BodyTooLarge:
    return BodyTooLarge(
        f"the body is {body.size:,} bytes or more; this endpoint takes at most {limit:,} bytes "
        "(TALLY_INGEST_MAX_BYTES): send the rows in several requests"
    )


def error(status: int, exc: TallyError, request_id: str, **headers: str) -> web.Response:
    body: dict[str, Any] = {"error": str(exc.args[0]), "rule": exc.rule, "request_id": request_id}
    return web.json_response(body, status=status, headers=headers)


async def handle_ingest(gateway: IngestGateway, request: web.Request, name: str) -> web.Response:
    """The whole exchange of one ingest request; never raises."""
    endpoint = gateway.endpoints.get(name)
    if endpoint is None:
        return web.json_response(
            {
                "error": f"no ingest endpoint {name!r}; there are: "
                + ", ".join(f"/api/ingest/{n}" for n in sorted(gateway.endpoints))
            },
            status=404,
        )
    request_id = new_request_id()
    started = time.monotonic()
    status = 500
    try:
        response = await exchange(gateway, request, endpoint.name, request_id)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    finally:
        INGEST_REQUESTS.labels(endpoint.name, str(status)).inc()
        INGEST_SECONDS.labels(endpoint.name).observe(time.monotonic() - started)


async def exchange(
    gateway: IngestGateway, request: web.Request, name: str, request_id: str
) -> web.Response:
    endpoint = gateway.endpoints[name]
    limit = gateway.settings.ingest_max_bytes
    try:
        try:
            body = await read_body(request, limit)
        except UnreadableBody as exc:
            await gateway.refuse(endpoint, b"", exc, request_id, 0)
            return error(400, exc, request_id)
        if not body.complete:
            refused = too_large(body, limit)
            await gateway.refuse(endpoint, body.data, refused, request_id, body.size)
            return error(413, refused, request_id)
        try:
            ndjson = request.content_type in NDJSON_TYPES
            result = await gateway.submit(endpoint, body.data, request_id, ndjson)
        except UnreadableBody as exc:
            await gateway.refuse(endpoint, body.data, exc, request_id, body.size)
            return error(400, exc, request_id)
    except (BrokerUnavailable, SchemaError) as exc:  # the registry is down: retry too
        return error(503, exc, request_id, **{"Retry-After": str(RETRY_AFTER_S)})
    return web.json_response(result.body(), status=202)
