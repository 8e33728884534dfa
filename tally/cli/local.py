"""The local setup: `tally broker`, `tally dev` (broker + worker + feed), `tally feed`."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlsplit

import click
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from faust.cli import AppCommand, argument, option

from tally.access.tokens import OPERATOR, SCOPES, issue, signing_key
from tally.app import app, gate, settings
from tally.broker.admin import ensure_topics
from tally.broker.local import LocalBroker, die_with_parent, port_accepts, stop_process
from tally.cli.errors import fail
from tally.codecs.catalog import (
    location_codec,
    metric_batch_codec,
    order_codec,
    page_view_codec,
    purchase_codec,
    redemption_codec,
)
from tally.core.clock import now_ms
from tally.core.errors import BrokerError, ConfigurationError
from tally.core.limits import TENANT_PATTERN
from tally.core.tenancy import not_a_tenant
from tally.coupons.campaigns import campaign_of
from tally.coupons.campaigns import publish as publish_campaign
from tally.feed import (
    ACK_TIMEOUT_S,
    DEFAULT_TENANTS,
    FeedProgress,
    Message,
    demo_campaign,
    encoded,
    locations,
    metric_batches,
    orders,
    page_views,
    purchases,
    raw_messages,
    redemptions,
    send_feed,
    social_posts,
)
from tally.settings import PIPELINES
from tally.topics import (
    COUPON_CAMPAIGNS,
    COUPON_PUSHES,
    COUPON_REDEMPTIONS,
    LOCATIONS,
    METRIC_SAMPLES,
    ORDERS,
    PAGE_VIEWS,
    PURCHASES,
    SOCIAL_RAW,
    SOURCE_TOPICS,
)

#: How long the tokens `tally dev` prints stay valid.
DEV_TOKEN_S = 30 * 86_400.0
#: The tenants `tally dev` feeds, with the same item and server ids: two tenants side by side.
DEMO_TENANTS = ("acme", "globex")


def local_broker_address() -> tuple[str, int]:
    if not settings.uses_local_broker:
        raise ConfigurationError(
            f"TALLY_BROKER={settings.broker!r}: the local broker needs a tansu://HOST:PORT URL"
        )
    parts = urlsplit(settings.broker_urls[0])
    return parts.hostname or "127.0.0.1", parts.port or 9092


async def run_until_stopped(*processes: subprocess.Popen[bytes] | None) -> None:
    """Wait for Ctrl-C or SIGTERM; raise if a child process dies first.

    The signals are taken over from Faust's command runner, so that clean-up runs as plain
    code after this returns rather than inside a cancelled task.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        for process in processes:
            if process is not None and process.poll() is not None:
                fail(f"{process.args!r} exited with code {process.returncode}")
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


@app.command()
async def broker(self: AppCommand) -> None:
    """Run the local broker (Tansu, memory-only) on TALLY_BROKER's host:port until Ctrl-C."""
    host, port = local_broker_address()
    local = LocalBroker(host, port, log_path=settings.data_dir / "broker.log")
    try:
        local.start()
    except BrokerError as exc:
        fail(str(exc))
    print(
        f"local broker ready on {local.url} (cluster {local.cluster_id}, pid {local.pid}); "
        f"log: {local.log_path}. Ctrl-C stops it.",
        flush=True,
    )
    try:
        await run_until_stopped(local.process)
    finally:
        local.stop()
        print("local broker stopped", flush=True)


#: What each feed sends, and to which topic.
FEEDS = {
    "sales": PURCHASES,
    "metrics": METRIC_SAMPLES,
    "social": SOCIAL_RAW,
    "fraud": ORDERS,
    "recommendations": PAGE_VIEWS,
    "coupons": LOCATIONS,
}


def feed_messages(
    pipeline: str, seed: int, tenants: Sequence[str], merchants: int
) -> Iterator[Message]:
    """The messages of a feed, event time = now: Avro purchases or metric batches, or raw
    posts of the networks Tally reads (each tenant a brand)."""
    rng = random.Random(seed)
    if pipeline == "sales":
        records = purchases(rng, clock_ms=now_ms, tenants=tenants, merchants=merchants)
        return encoded(records, "item_id", purchase_codec())
    if pipeline == "metrics":
        return encoded(
            metric_batches(rng, clock_ms=now_ms, tenants=tenants), "server_id", metric_batch_codec()
        )
    if pipeline == "fraud":
        placed = (order for order, _ in orders(rng, clock_ms=now_ms, tenants=tenants))
        return encoded(placed, "customer_id", order_codec())
    if pipeline == "recommendations":
        viewed = page_views(rng, clock_ms=now_ms, tenants=tenants)
        return encoded(viewed, "session_id", page_view_codec())
    if pipeline == "coupons":
        located = locations(rng, clock_ms=now_ms, tenants=tenants)
        return encoded(located, "user_id", location_codec())
    return raw_messages(social_posts(rng, clock_ms=now_ms, brands=tenants))


async def run_feed(
    pipeline: str,
    *,
    rate: float,
    count: int,
    seed: int,
    tenants: Sequence[str] = DEFAULT_TENANTS,
    merchants: int = 0,
    quiet: bool = False,
) -> int:
    messages = feed_messages(pipeline, seed, tenants, merchants)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        linger_ms=5,
        request_timeout_ms=int(ACK_TIMEOUT_S * 1000),
    )
    try:
        await ensure_topics(
            settings.bootstrap_servers,
            SOURCE_TOPICS,
            partitions=settings.partitions,
            replication=settings.replication,
        )
        await producer.start()
    except (KafkaError, OSError) as exc:
        await producer.stop()
        raise BrokerError(f"cannot reach the broker at {settings.broker}: {exc}") from exc
    redeeming = None
    if pipeline == "coupons":
        redeeming = asyncio.create_task(redeem_pushed_coupons(producer, seed))
        redeeming.add_done_callback(report_failure)
    try:
        return await send_feed(
            producer,
            topic=FEEDS[pipeline],
            messages=messages,
            rate=rate,
            count=count,
            progress=FeedProgress(pipeline),
            quiet=quiet,
        )
    finally:
        if redeeming is not None:
            redeeming.cancel()
            await asyncio.gather(redeeming, return_exceptions=True)
        await producer.stop()


def report_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        print(f"coupons feed: redeeming stopped: {task.exception()!r}", file=sys.stderr)


async def redeem_pushed_coupons(producer: AIOKafkaProducer, seed: int) -> None:
    """The coupons feed's shoppers redeem some of the coupons pushed from now on (feed's
    `redemptions`), until cancelled."""
    consumer = AIOKafkaConsumer(
        settings.generation_topic(COUPON_PUSHES),
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        metadata_max_age_ms=5_000,  # the worker may create the topic after this starts
    )
    rng, codec = random.Random(seed), redemption_codec()
    await consumer.start()
    try:
        while True:
            fetched = await consumer.getmany(timeout_ms=1_000)
            pushes = [orjson.loads(r.value) for records in fetched.values() for r in records]
            for redeemed in redemptions(rng, pushes, clock_ms=now_ms):
                await producer.send(
                    COUPON_REDEMPTIONS, codec.dumps(redeemed), key=redeemed["coupon_id"].encode()
                )
    finally:
        await consumer.stop()


@app.command(
    argument("pipeline", type=click.Choice(sorted(FEEDS))),
    option(
        "--rate",
        type=float,
        default=100.0,
        show_default=True,
        help="Messages per second (0 = as fast as possible).",
    ),
    option(
        "--count",
        type=int,
        default=0,
        show_default=True,
        help="Messages to send, then stop (0 = until Ctrl-C).",
    ),
    option(
        "--seed",
        type=int,
        default=1,
        show_default=True,
        help="Random seed: the same seed sends the same items and values.",
    ),
    option(
        "--tenant",
        "tenants",
        multiple=True,
        help="A tenant whose data to send (repeat for several, taking turns with the same "
        "ids); none: the default tenant (TALLY_DEFAULT_TENANT).",
    ),
    option(
        "--merchants",
        type=click.IntRange(0, 10_000_000),
        default=0,
        show_default=True,
        help="sales: purchases of this many merchants (tenants m00000, m00001, ..., Zipf: a "
        "few sell most), instead of --tenant's.",
    ),
)
async def feed(
    self: AppCommand,
    pipeline: str,
    rate: float,
    count: int,
    seed: int,
    tenants: tuple[str, ...],
    merchants: int,
) -> None:
    """Send sample data, event time = now: `sales` (purchases), `metrics` (metric batches),
    `social` (posts in the X and Mastodon formats, each tenant a brand), `fraud` (orders,
    some fraudulent, each tenant a merchant), `recommendations` (page views of browsing
    sessions, each tenant a shop) or `coupons` (phones' locations around the city centre,
    the sales feed's customers, each tenant a shop)."""
    for tenant in tenants:
        if not TENANT_PATTERN.fullmatch(tenant):
            fail(not_a_tenant(f"--tenant {tenant[:70]!r}"))
    if merchants and (tenants or pipeline != "sales"):
        fail("--merchants names the tenants of sales purchases: give it alone, with sales")
    try:
        sent = await run_feed(
            pipeline,
            rate=rate,
            count=count,
            seed=seed,
            tenants=tenants or DEFAULT_TENANTS,
            merchants=merchants,
        )
    except BrokerError as exc:
        fail(f"{pipeline}: {exc}")
    print(f"{pipeline}: sent {sent} messages to {FEEDS[pipeline]}, all acknowledged", flush=True)


async def publish_demo_campaigns(bootstrap: str) -> None:
    """A campaign per demo tenant around the feed's city centre (tally.feed.demo_campaign)."""
    for tenant in DEMO_TENANTS:
        campaign, value = campaign_of(demo_campaign(tenant, now_ms()))
        await publish_campaign([bootstrap], COUPON_CAMPAIGNS, 1, campaign, value)


def wait_for_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            fail(
                f"the worker exited with code {process.returncode}; last lines of {log}:\n"
                + "\n".join(tail)
            )
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    fail(f"the worker did not answer {url} within {timeout:.0f} s; see {log}")


def dev_pipelines() -> str:
    """What `tally dev`'s worker runs: every pipeline, merchants' figures included, unless
    TALLY_PIPELINES says otherwise."""
    return os.environ.get("TALLY_PIPELINES") or ",".join(PIPELINES)


def dashboards() -> str:
    """The dashboard's URL per demo token (in the fragment: a browser never sends it), or
    the bare URL when access control is off."""
    first = DEMO_TENANTS[0]
    if settings.auth == "off":
        return f"  dashboard        {settings.web_url}/#tenant={first}  (open it in a browser)\n"
    key = signing_key(settings.signing_key_path, create=True)
    assert key is not None
    expected = gate.expected
    operator = issue(key, "dev-operator", OPERATOR, frozenset(SCOPES), DEV_TOKEN_S, expected)[0]
    lines = [
        f"  dashboard        {settings.web_url}/#token={operator}&tenant={first}",
        "                   (an operator: every scope; the site-wide top-10 over every tenant,",
        f"                   and tenant {first}'s servers: change the tenant on the page)",
    ]
    for tenant in DEMO_TENANTS:
        reader = issue(key, f"dev-{tenant}", tenant, frozenset({"read"}), DEV_TOKEN_S, expected)[0]
        lines += [
            f"  tenant {tenant:<9} {settings.web_url}/#token={reader}",
            f"                   (tenant {tenant}, read only: its own top-10, servers and "
            "merchant figures)",
        ]
    return "\n".join(
        [
            *lines,
            f"  token            export TALLY_TOKEN={operator}",
            f'                   curl -H "Authorization: Bearer $TALLY_TOKEN" '
            f"{settings.web_url}/api/sales/top",
            "",
        ]
    )


@app.command(
    option(
        "--sales-rate",
        type=float,
        default=50.0,
        show_default=True,
        help="Purchases per second in the sample feed.",
    ),
    option(
        "--metrics-rate",
        type=float,
        default=5.0,
        show_default=True,
        help="Metric batches per second in the sample feed.",
    ),
    option(
        "--social-rate",
        type=float,
        default=5.0,
        show_default=True,
        help="Raw social messages per second in the sample feed.",
    ),
    option(
        "--fraud-rate",
        type=float,
        default=5.0,
        show_default=True,
        help="Orders per second in the sample feed (the fraud pipeline decides them).",
    ),
    option(
        "--views-rate",
        type=float,
        default=20.0,
        show_default=True,
        help="Page views per second in the sample feed (recommendations).",
    ),
    option(
        "--locations-rate",
        type=float,
        default=10.0,
        show_default=True,
        help="Phone locations per second in the sample feed (coupons).",
    ),
)
async def dev(
    self: AppCommand,
    sales_rate: float,
    metrics_rate: float,
    social_rate: float,
    fraud_rate: float,
    views_rate: float,
    locations_rate: float,
) -> None:
    """Local broker + one worker + sample feed, URLs printed; Ctrl-C stops everything."""
    host, port = local_broker_address()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if port_accepts(settings.web_host, settings.web_port):
        fail(f"port {settings.web_port} is taken; set TALLY_WEB_PORT to a free one")
    local = LocalBroker(host, port, log_path=settings.data_dir / "broker.log")
    worker: subprocess.Popen[bytes] | None = None
    feeds: list[asyncio.Task[int]] = []
    worker_log = settings.data_dir / "worker.log"
    try:
        print(f"starting the local broker on {local.url} ...", flush=True)
        try:
            local.start()
        except BrokerError as exc:
            fail(str(exc))
        print(f"starting a worker (log: {worker_log}) ...", flush=True)
        with worker_log.open("ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "tally", "worker", "--loglevel", settings.log_level],
                env={**os.environ, "TALLY_BROKER": local.url, "TALLY_PIPELINES": dev_pipelines()},
                preexec_fn=die_with_parent,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        await asyncio.to_thread(
            wait_for_http, settings.web_url + "/api/health", worker, worker_log, 120
        )
        await publish_demo_campaigns(local.bootstrap)
        feeds = [
            asyncio.create_task(
                run_feed(pipeline, rate=rate, count=0, seed=seed, tenants=DEMO_TENANTS, quiet=True)
            )
            for pipeline, rate, seed in (
                ("sales", sales_rate, 1),
                ("metrics", metrics_rate, 2),
                ("social", social_rate, 3),
                ("fraud", fraud_rate, 4),
                ("recommendations", views_rate, 5),
                ("coupons", locations_rate, 6),
            )
        ]
        print(
            "\nTally is running.\n"
            f"{dashboards()}"
            f"  API              {settings.web_url}/api/openapi.json  (curl {settings.web_url}/ "
            "lists the endpoints)\n"
            f"  live streams     {settings.web_url}/api/stream/sales/top, "
            f"{settings.web_url}/api/stream/servers/server-0000?tenant={DEMO_TENANTS[0]}\n"
            f"  merchants        {settings.web_url}/api/merchants/{DEMO_TENANTS[0]}/sales?step=1h, "
            f".../summary, .../top-items (each demo tenant is a merchant)\n"
            f"  social           {settings.web_url}/api/social/summary?tenant={DEMO_TENANTS[0]}, "
            f"/api/social/alerts?tenant={DEMO_TENANTS[0]} (each demo tenant is a brand)\n"
            f"  fraud            {settings.web_url}/api/fraud/reviews?tenant={DEMO_TENANTS[0]}, "
            f"/api/fraud/models (each demo tenant is a merchant)\n"
            f"  recommendations  {settings.web_url}/api/recommendations?session=s000001&"
            f"tenant={DEMO_TENANTS[1 % len(DEMO_TENANTS)]} (sessions s000000, s000001, ... "
            "of the demo tenants in turn)\n"
            f"  coupons          {settings.web_url}/api/coupons/campaigns?tenant={DEMO_TENANTS[0]} "
            "(a campaign per demo tenant around the city centre; pushes on coupon-pushes)\n"
            f"  schema registry  {settings.web_url}/registry/subjects\n"
            f"  broker           {local.url}\n"
            f"  feed             {sales_rate:g} purchases/s, {metrics_rate:g} metric batches/s, "
            f"{social_rate:g} social messages/s, {fraud_rate:g} orders/s, "
            f"{views_rate:g} page views/s, {locations_rate:g} locations/s, "
            f"tenants {' and '.join(DEMO_TENANTS)} in turn, with the same ids\n"
            f"  logs             {worker_log}, {local.log_path}\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        await run_until_stopped(worker, local.process)
    finally:
        for task in feeds:
            task.cancel()
        # Let the producers stop while the broker is still up.
        await asyncio.wait_for(asyncio.gather(*feeds, return_exceptions=True), 10)
        print("stopping the worker (it exits within TALLY_STOP_TIMEOUT_SECONDS) ...", flush=True)
        stop_process(worker, settings.stop_timeout_seconds + 10)
        local.stop()
        print("stopped: feed, worker, broker", flush=True)
