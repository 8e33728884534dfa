"""`POST /api/ingest/{endpoint}` over HTTP: one aiohttp handler for the worker's web server
and for the stateless `tally ingest` process.

Statuses: 202 (rows checked; accepted ones are in Kafka, rejected ones are in dead-letters,
each listed with index and reason), 400 (no readable row at all, or a compressed body that
does not inflate), 404 (no such endpoint), 408 (the body did not arrive in time), 413 (over
TALLY_INGEST_MAX_BYTES, inflated or not, or more rows than TALLY_INGEST_MAX_ROWS), 415 (not
JSON/NDJSON, or an unknown Content-Encoding: answered by `tally.http.hygiene`), 503 (the broker
is gone or did not acknowledge, or too many requests wait: retry). Every refused body is
dead-lettered too (its head), so nothing sent is lost without a trace; a 503 writes nothing.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from tally.broker.watch import BrokerWatch
from tally.codecs.catalog import metric_batch_codec, purchase_batch_codec
from tally.core.errors import BodyTimeout, BodyTooLarge, SchemaError, TallyError, UnreadableBody
from tally.http.access import caller
from tally.http.hygiene import NDJSON_TYPES, read_body, too_large
from tally.ingest.gateway import (
    REFUSED_HEAD_BYTES,
    BrokerUnavailable,
    Busy,
    IngestGateway,
    endpoints,
    new_request_id,
)
from tally.settings import Settings
from tally.telemetry import INGEST_REQUESTS, INGEST_SECONDS

#: Seconds a client should wait before retrying after a 503.
RETRY_AFTER_S = 5


def make_gateway(settings: Settings, watch: BrokerWatch) -> IngestGateway:
    """The gateway of this process, encoding with the registry's codecs."""
    return IngestGateway(
        settings, endpoints(settings, purchase_batch_codec, metric_batch_codec), watch
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
        gateway.fail_fast()
        async with gateway.admission.slot():
            tenant = caller(request).tenant  # the gate let only a token with ingest in
            try:
                body = await read_body(request, limit, REFUSED_HEAD_BYTES)
            except BodyTimeout as exc:
                return error(408, exc, request_id)
            except UnreadableBody as exc:
                await gateway.refuse(endpoint, b"", exc, request_id, 0, tenant)
                return error(400, exc, request_id)
            try:
                if not body.complete:
                    raise too_large(body, limit, "TALLY_INGEST_MAX_BYTES")
                ndjson = request.content_type in NDJSON_TYPES
                result = await gateway.submit(endpoint, body.data, request_id, ndjson, tenant)
            except (UnreadableBody, BodyTooLarge) as exc:
                await gateway.refuse(endpoint, body.data, exc, request_id, body.size, tenant)
                return error(413 if isinstance(exc, BodyTooLarge) else 400, exc, request_id)
    except Busy as exc:
        return error(503, exc, request_id, **{"Retry-After": "1"})
    except (BrokerUnavailable, SchemaError) as exc:  # the registry is down: retry too
        return error(503, exc, request_id, **{"Retry-After": str(RETRY_AFTER_S)})
    return web.json_response(result.body(), status=202)
