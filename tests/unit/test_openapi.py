"""The OpenAPI document describes every route each process serves, and nothing else."""

from __future__ import annotations

from tally.broker.watch import BrokerWatch
from tally.dlq import DeadLetterWatch
from tally.ingest.http import make_gateway
from tally.web.ingest_tier import INGEST_TIER, ingest_application
from tally.web.openapi import OPERATIONS


def routes(router) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return {
        (route.method.lower(), route.resource.canonical)
        for route in router.routes()
        if route.method not in ("HEAD", "OPTIONS")
    }


def each_ingest_endpoint(served: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """One aiohttp route serves every ingest endpoint; the document names each one."""
    from tally.app import settings

    served = served - {("post", "/api/ingest/{endpoint}")}
    gateway = make_gateway(settings, BrokerWatch(["x:1"]))
    return served | {("post", f"/api/ingest/{name}") for name in gateway.endpoints}


def documented(operations) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return {(op.method, op.path) for op in operations}


def test_every_worker_route_is_documented() -> None:
    from tally.app import app

    app.discover()
    app.web.init_server()
    served = routes(app.web.web_app.router)
    assert each_ingest_endpoint(served) == documented(OPERATIONS)


def test_every_ingest_tier_route_is_documented() -> None:
    from tally.app import body_limits, settings

    gateway = make_gateway(settings, BrokerWatch(["x:1"]))
    application = ingest_application(gateway, DeadLetterWatch(["x:1"]), body_limits(settings), 15)
    assert each_ingest_endpoint(routes(application.router)) == documented(INGEST_TIER)
