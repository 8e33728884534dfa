"""`tally ingest` (the stateless write tier) and `tally agent` (simulated servers posting to it)."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import click
from aiohttp import web
from faust.cli import AppCommand, option

from tally.app import app, body_limits, exit_after, gate, settings
from tally.broker.watch import BrokerWatch
from tally.cli.errors import fail, parsed_by
from tally.cli.local import run_until_stopped
from tally.dlq import DeadLetterWatch
from tally.ingest.agent import AgentGaveUp, Backoff, run_agents
from tally.ingest.http import make_gateway
from tally.runtime.logs import quiet_repeats
from tally.settings import duration_seconds
from tally.web.ingest_tier import ingest_application

logger = logging.getLogger(__name__)


@app.command()
async def ingest(self: AppCommand) -> None:
    """Run the ingest tier alone: POST /api/ingest/* into Kafka, no tables, no consumer
    group. Listens on TALLY_WEB_HOST:TALLY_WEB_PORT; run several behind a load balancer."""
    broker = BrokerWatch(settings.bootstrap_servers)
    gateway = make_gateway(settings, broker)
    watch = DeadLetterWatch(settings.bootstrap_servers)
    quiet_repeats()
    await broker.start()
    await gateway.start()
    await watch.start()
    application = ingest_application(
        gateway, watch, body_limits(settings), settings.http_header_timeout_seconds, gate
    )
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    revocations = None
    try:
        if gate.enabled:  # health answers 503 until they are read
            revocations = asyncio.create_task(
                gate.revocations.follow(
                    settings.bootstrap_servers, settings.revocations_topic, settings.replication
                )
            )
            revocations.add_done_callback(stopped_following)
        site = web.TCPSite(runner, settings.web_host, settings.web_port)
        try:
            await site.start()
        except OSError as exc:
            fail(
                f"cannot listen on {settings.web_host}:{settings.web_port} ({exc.strerror}); "
                "set TALLY_WEB_PORT to a free port"
            )
        print(
            f"ingest tier on {settings.web_url} -> broker {settings.broker}\n"
            f"  POST {settings.web_url}/api/ingest/purchases | /api/ingest/metrics\n"
            f"  docs {settings.web_url}/api/openapi.json\n"
            "Ctrl-C stops it.",
            flush=True,
        )
        await run_until_stopped()
    finally:
        exit_after(settings.stop_timeout_seconds)  # a broker that is gone must not hang the stop
        if revocations is not None:
            revocations.cancel()
        await runner.cleanup()
        await watch.stop()
        await gateway.stop()
        await broker.stop()


def stopped_following(task: asyncio.Task[None]) -> None:
    """The revoked tokens are followed until the process stops; anything else is a bug that
    must not pass silently (the process would keep trusting what it last read)."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("following the revoked tokens stopped", exc_info=task.exception())
        os._exit(70)  # EX_SOFTWARE: a supervisor restarts the process


def duration_option(name: str, default: str, help: str) -> Any:
    return option(
        name,
        default=default,
        show_default=True,
        callback=parsed_by(duration_seconds),
        help=help,
    )


@app.command(
    option("--servers", type=click.IntRange(1), default=100, show_default=True),
    option("--metrics", type=click.IntRange(1), default=10, show_default=True),
    duration_option("--interval", "15s", "How often each server posts its batch."),
    duration_option("--resolution", "5s", "How often each server samples each metric."),
    option("--url", default=None, help="Ingest base URL [default: this worker's web URL]."),
    option(
        "--rounds",
        type=click.IntRange(0),
        default=0,
        show_default=True,
        help="Posts per server, then stop (0 = until Ctrl-C).",
    ),
    option("--retries", type=click.IntRange(0), default=5, show_default=True),
    duration_option(
        "--backoff", "500ms", "First retry's ceiling; doubles per retry (full jitter)."
    ),
    duration_option("--max-backoff", "30s", "Largest retry ceiling."),
    duration_option(
        "--give-up",
        "60s",
        "Exit with an error when batches fail and none was delivered for this long.",
    ),
    option("--seed", type=int, default=1, show_default=True),
    option(
        "--token",
        envvar="TALLY_TOKEN",
        default="",
        help="Bearer token with the ingest scope (`tally tokens issue`) [env: TALLY_TOKEN].",
    ),
)
async def agent(
    self: AppCommand,
    servers: int,
    metrics: int,
    interval: float,
    resolution: float,
    url: str | None,
    rounds: int,
    retries: int,
    backoff: float,
    max_backoff: float,
    give_up: float,
    seed: int,
    token: str,
) -> None:
    """Simulate server agents: each batches its samples and POSTs them every --interval to
    /api/ingest/metrics, retrying with exponential backoff and full jitter; a progress line
    every 5 s (sent, retried, failed, rate)."""
    target = (url or settings.web_url).rstrip("/") + "/api/ingest/metrics"
    print(
        f"agent: {servers} servers x {metrics} metrics, every {interval:g} s -> {target}",
        flush=True,
    )
    try:
        stats = await run_agents(
            target,
            servers=servers,
            metrics=metrics,
            interval_s=interval,
            resolution_s=resolution,
            rounds=rounds,
            backoff=Backoff(base_s=backoff, cap_s=max_backoff, retries=retries),
            seed=seed,
            give_up_s=give_up,
            token=token,
        )
    except AgentGaveUp as exc:
        fail(f"agent gave up: {exc}")
    print(stats.line(), flush=True)
    if stats.failed:
        fail(f"{stats.failed} batches could not be delivered")
