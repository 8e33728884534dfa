"""The OpenAPI document describes every route each process serves, and nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tally.access.policy import access_of
from tally.broker.watch import BrokerWatch
from tally.dlq import DeadLetterWatch
from tally.ingest.http import make_gateway
from tally.web.ingest_tier import INGEST_TIER, ingest_application
from tally.web.openapi import OPERATIONS, document, served_by


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
    from tally.app import app, settings

    app.discover()
    app.web.init_server()
    served = routes(app.web.web_app.router)
    assert each_ingest_endpoint(served) == documented(served_by(settings.pipelines))


def ingest_tier_routes() -> set[tuple[str, str]]:
    from tally.app import body_limits, gate, settings

    gateway = make_gateway(settings, BrokerWatch(["x:1"]))
    application = ingest_application(
        gateway, DeadLetterWatch(["x:1"]), body_limits(settings), 15, gate
    )
    return routes(application.router)


def test_every_ingest_tier_route_is_documented() -> None:
    assert each_ingest_endpoint(ingest_tier_routes()) == documented(INGEST_TIER)


def test_every_route_has_an_access_rule_and_the_document_declares_it() -> None:
    """A route without a rule would be refused by the gate (never open by omission); the
    document states every rule, the one the gate applies."""
    from tally.app import app

    app.discover()
    app.web.init_server()
    served = routes(app.web.web_app.router) | ingest_tier_routes()
    assert [route for route in sorted(served) if access_of(*route) is None] == []
    paths = document()["paths"]
    for op in OPERATIONS:
        declared = paths[op.path][op.method]
        rule = access_of(op.method, op.route or op.path)
        assert rule is not None
        assert declared["x-tally-access"] == {"scopes": sorted(rule.scopes), "reach": rule.reach}
        assert declared["security"] == ([] if rule.open else [{"bearer": []}, {"basic": []}])
        if not rule.open:
            assert {"401", "403", "429"} <= set(declared["responses"])


READER_ROUTES = """
import json
from tally.app import app
app.discover()
app.web.init_server()
print(json.dumps(sorted(
    (route.method.lower(), route.resource.canonical)
    for route in app.web.web_app.router.routes()
    if route.method not in ("HEAD", "OPTIONS")
)))
"""


def test_every_reader_route_is_documented_and_only_those(tmp_path: Path) -> None:
    """A reader (TALLY_ROLE=read) serves its pipeline's queries, health, the index and
    /metrics: the document it shows lists those, no more."""
    env = {
        **os.environ,
        "TALLY_ROLE": "read",
        "TALLY_PIPELINES": "merchants",
        "TALLY_DATA_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-c", READER_ROUTES], env=env, capture_output=True, text=True, check=True
    )
    served = {tuple(route) for route in json.loads(done.stdout.splitlines()[-1])}
    assert served == documented(served_by(["merchants"], reads_only=True))
    assert ("get", "/api/merchants/{merchant_id}/sales") in served
    assert not any(path.startswith("/api/ingest") for _, path in served)


def test_every_route_of_every_pipeline_is_documented(tmp_path: Path) -> None:
    """A worker running every pipeline serves what the document lists for them, no more."""
    from tally.app import settings
    from tally.settings import PIPELINES

    env = {**os.environ, "TALLY_PIPELINES": ",".join(PIPELINES), "TALLY_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", READER_ROUTES], env=env, capture_output=True, text=True, check=True
    )
    served = {tuple(route) for route in json.loads(done.stdout.splitlines()[-1])}
    assert each_ingest_endpoint(served) == documented(served_by(PIPELINES))
    assert ("get", "/api/recommendations") in served
    assert settings.pipelines != frozenset(PIPELINES)  # the test above covers the default set
