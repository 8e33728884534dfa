"""The OpenAPI document describes every route each process serves, and nothing else."""

from __future__ import annotations

from tally.dlq import DeadLetterWatch
from tally.ingest.http import make_gateway
from tally.ingest.server import INGEST_TIER, ingest_application
from tally.web.openapi import OPERATIONS


def routes(router) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return {
        (route.method.lower(), route.resource.canonical)
        for route in router.routes()
        if route.method not in ("HEAD", "OPTIONS")
    }


def documented(operations) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return {(op.method, op.path) for op in operations}


def test_every_worker_route_is_documented() -> None:
    from tally.app import app

    app.discover()
    app.web.init_server()
    served = routes(app.web.web_app.router)
    # One aiohttp route serves every ingest endpoint; the document names each.
    served.discard(("post", "/api/ingest/{endpoint}"))
    served |= {("post", "/api/ingest/purchases"), ("post", "/api/ingest/metrics")}
    assert served == documented(OPERATIONS)


def test_every_ingest_tier_route_is_documented() -> None:
    from tally.app import settings

    application = ingest_application(make_gateway(settings), DeadLetterWatch(["x:1"]))
    served = routes(application.router)
    served.discard(("post", "/api/ingest/{endpoint}"))
    served |= {("post", "/api/ingest/purchases"), ("post", "/api/ingest/metrics")}
    assert served == documented(INGEST_TIER)
