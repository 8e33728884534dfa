"""The stateless ingest tier (`tally ingest`): the write path alone, scaled apart from workers.

A plain aiohttp application, no Faust worker: no consumer group, no tables. It serves the
ingest endpoints with the same handler as the workers, plus what a load balancer and an
operator need (health, OpenAPI, Prometheus, dead-letter stats).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tally import __version__
from tally.dlq import DeadLetterWatch
from tally.http.access import Gate, Refusal, tenant_asked
from tally.http.hygiene import BodyLimits, application_options, expect_handler
from tally.ingest.gateway import IngestGateway
from tally.ingest.http import handle_ingest
from tally.web.openapi import OPERATIONS, document, endpoint_index

INGEST_TIER = [op for op in OPERATIONS if op.on_ingest_tier]


def ingest_application(
    gateway: IngestGateway,
    watch: DeadLetterWatch,
    limits: BodyLimits,
    header_timeout_s: float,
    gate: Gate,
) -> web.Application:
    openapi_document = document(INGEST_TIER)
    index_body = {
        "service": "tally-ingest",
        "version": __version__,
        "endpoints": endpoint_index(INGEST_TIER),
        "openapi": "/api/openapi.json",
    }

    async def ingest(request: web.Request) -> web.Response:
        return await handle_ingest(gateway, request, request.match_info["endpoint"])

    async def index(request: web.Request) -> web.Response:
        return web.json_response(index_body)

    async def health(request: web.Request) -> web.Response:
        """Ready when the broker takes connections and the revoked tokens are read: a load
        balancer then routes here."""
        if not gateway.watch.reachable:
            return web.json_response(
                {"status": "unavailable", "reason": gateway.watch.reason}, status=503
            )
        if not gate.revocations.loaded:
            return web.json_response(
                {"status": "starting", "reason": "reading the revoked tokens"}, status=503
            )
        return web.json_response({"status": "ready", "role": "ingest"})

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "role": "ingest"})

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(openapi_document)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    async def dead_letter_stats(request: web.Request) -> web.Response:
        try:
            tenant = tenant_asked(request, gateway.settings.default_tenant, across=True)
        except Refusal as refused:
            return refused.answer(request.path)
        return web.json_response(watch.body(tenant))

    application = web.Application(**application_options(limits, header_timeout_s, gate.admit))
    expect = expect_handler(limits)
    application.add_routes(
        [
            web.get("/", index),
            web.get("/api/health", health),
            web.get("/api/health/live", live),
            web.get("/api/openapi.json", openapi),
            web.get("/metrics", metrics),
            web.get("/api/dead-letters/stats", dead_letter_stats),
            web.post("/api/ingest/{endpoint}", ingest, expect_handler=expect),
        ]
    )
    return application
