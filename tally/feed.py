"""Sample data: purchases, metric batches and social posts, deterministic for a seed, sent at a
steady rate.

Generators are pure (a `random.Random`, a clock value in, records out) so tests and benchmarks
make the same bytes; `send_feed` paces them into Kafka with a plain aiokafka producer.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import random
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tally.codecs.avro import AvroCodec, Record
from tally.core.errors import BrokerError

METRIC_NAMES = ("cpu.util", "mem.used", "disk.util", "net.rx", "net.tx", "load.1m")


def zipf_weights(n: int, s: float = 1.1) -> list[float]:
    """Cumulative Zipf weights over ranks 1..n: a few items sell most, as in real shops."""
    return list(itertools.accumulate(1.0 / (rank**s) for rank in range(1, n + 1)))


#: A feed's tenants when none are named: the deployment's default tenant (TALLY_DEFAULT_TENANT).
DEFAULT_TENANTS = ("",)


def merchant_names(count: int) -> list[str]:
    """The sample feed's merchants (each a tenant): m00000, m00001, ..."""
    return [f"m{number:05d}" for number in range(count)]


def purchases(
    rng: random.Random,
    *,
    items: int = 1000,
    customers: int = 5000,
    clock_ms: Callable[[], int],
    tenants: Sequence[str] = DEFAULT_TENANTS,
    merchants: int = 0,
) -> Iterator[Record]:
    """Endless purchases; item popularity is Zipf-distributed, event time from `clock_ms`;
    the `tenants` take turns, with the same item ids, or with `merchants`, each purchase is
    one of that many merchants' (Zipf: a few merchants sell most); customers are
    Zipf-distributed too. Customers and merchants are drawn from generators of their own, so
    the items of a seed stay what they were."""
    cumulative = zipf_weights(items)
    buyers = random.Random(hash(rng.getstate()[1]))  # per seed, without drawing from `rng`
    frequent = zipf_weights(customers, 0.8)
    shops = random.Random(hash(rng.getstate()[1]) + 1)
    names, busy = merchant_names(merchants), zipf_weights(merchants)
    for number in itertools.count():
        (item,) = rng.choices(range(items), cum_weights=cumulative)
        tenant = (
            shops.choices(names, cum_weights=busy)[0]
            if merchants
            else tenants[number % len(tenants)]
        )
        yield {
            "purchase_id": f"p{number}-{rng.getrandbits(32):08x}",
            "item_id": f"item-{item:05d}",
            "quantity": rng.choice((1, 1, 1, 2, 2, 3, 5)),
            "unit_price_cents": rng.randrange(99, 99_999),
            "event_time_ms": clock_ms(),
            "metadata": {"channel": rng.choice(("web", "app", "store"))},
            "tenant": tenant,
            "customer_id": f"cust-{buyers.choices(range(customers), cum_weights=frequent)[0]:06d}",
        }


def historical_purchases(
    rng: random.Random, *, count: int, items: int, end_ms: int, span_ms: int
) -> list[Record]:
    """`count` purchases spread evenly over `span_ms` ending at `end_ms`, Zipf over `items`,
    with ±10 minutes of jitter (out of order) and every 50th sharing its predecessor's time."""
    cumulative = zipf_weights(items)
    chosen = rng.choices(range(items), cum_weights=cumulative, k=count)
    step = span_ms / count
    out: list[Record] = []
    for n, item in enumerate(chosen):
        ts = int(end_ms - span_ms + n * step) + rng.randrange(-600_000, 600_000)
        if n % 50 == 1:
            ts = out[-1]["event_time_ms"]
        out.append(
            {
                "purchase_id": f"p{n}",
                "item_id": f"item-{item:06d}",
                "quantity": rng.randint(1, 5),
                "unit_price_cents": 500,
                "event_time_ms": min(ts, end_ms),
                "metadata": {},
            }
        )
    return out


#: Sample post texts: {brand} and {product} are filled in; VADER scores them as they read.
POST_TEXTS = {
    "positive": (
        "Love my new {product} from @{brand}, fits perfectly! #happy",
        "Great service from {brand} today, the staff were so helpful :)",
        "The {product} arrived early and it looks amazing. Thanks @{brand}!",
        "Honestly the best {product} I have owned. #{brand} #win",
    ),
    "neutral": (
        "Picked up a {product} at {brand} this morning.",
        "Does anyone know when {brand} restocks the {product}?",
        "{brand} opens a new store downtown next week https://example.com/news",
        "Comparing the {product} from {brand} with the older model.",
    ),
    "negative": (
        "My {product} from @{brand} broke after two days. Terrible quality #fail",
        "Worst customer service ever, {brand} ignored me for a week. Never again!",
        "Still waiting for my refund from {brand}. This is awful and frustrating",
        "The {product} is a total disaster, {brand} should be ashamed #boycott",
    ),
}
PRODUCTS = ("jacket", "sneakers", "backpack", "headphones", "coffee maker", "desk lamp")
#: The networks the feed writes posts of (their JSON formats: tally.social.channels).
SOCIAL_CHANNELS = ("x", "mastodon")


@dataclass(frozen=True)
class RawPost:
    """A raw social message as a network gives it: its brand (the key), channel (the
    `tally.channel` header), JSON value, and the standard posts it holds (for checks)."""

    brand: str
    channel: str
    value: bytes
    posts: tuple[Record, ...]


def social_posts(
    rng: random.Random,
    *,
    clock_ms: Callable[[], int],
    brands: Sequence[str] = DEFAULT_TENANTS,
    channels: Sequence[str] = SOCIAL_CHANNELS,
    authors: int = 2000,
) -> Iterator[RawPost]:
    """Endless raw posts about the `brands` (in turn) on the `channels` (in turn): a third
    negative, likes and shares heavy-tailed (a few posts go far), an X message now and then a
    page of two or three posts."""
    busy = zipf_weights(authors)
    for number in itertools.count():
        brand = brands[number % len(brands)]
        channel = channels[(number // len(brands)) % len(channels)]
        size = rng.choice((1, 1, 1, 2, 3)) if channel == "x" else 1
        posts = []
        for index in range(size):
            mood = rng.choice(("positive", "neutral", "negative"))
            text = rng.choice(POST_TEXTS[mood]).format(
                brand=brand or "shop", product=rng.choice(PRODUCTS)
            )
            author = rng.choices(range(authors), cum_weights=busy)[0]
            posts.append(
                {
                    "post_id": f"{number}{index}{rng.getrandbits(24):06x}",
                    "channel": channel,
                    "author": f"user{author}",
                    "text": text,
                    "likes": int(rng.paretovariate(1.2)) - 1,
                    "shares": int(rng.paretovariate(1.5)) - 1,
                    "created_at_ms": clock_ms(),
                }
            )
        yield RawPost(brand, channel, NETWORK_FORMATS[channel](posts), tuple(posts))


def iso_z(ms: int) -> str:
    """A time as networks write it: ISO 8601, milliseconds, `Z`."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def x_document(posts: Sequence[Record]) -> bytes:
    """Posts as an X API v2 answer: `data` (one post, or a page), authors in `includes`."""
    data = [
        {
            "id": post["post_id"],
            "text": post["text"],
            "author_id": str(zlib.crc32(post["author"].encode())),
            "created_at": iso_z(post["created_at_ms"]),
            "public_metrics": {
                "like_count": post["likes"],
                "retweet_count": post["shares"],
                "quote_count": 0,
                "reply_count": 0,
            },
        }
        for post in posts
    ]
    users = [
        {"id": item["author_id"], "username": post["author"]}
        for item, post in zip(data, posts, strict=True)
    ]
    return orjson.dumps({"data": data[0] if len(data) == 1 else data, "includes": {"users": users}})


#: How Mastodon renders a hashtag and a mention in a status's HTML.
HASHTAG_HTML = (
    '<a href="https://mastodon.example/tags/{0}" class="mention hashtag" rel="tag">'
    "#<span>{0}</span></a>"
)
MENTION_HTML = (
    '<span class="h-card"><a href="https://mastodon.example/@{0}" class="u-url mention">'
    "@<span>{0}</span></a></span>"
)


def mastodon_html(text: str) -> str:
    """A status's HTML as Mastodon renders it: hashtags and mentions as links, in a <p>."""
    words = []
    for word in html.escape(text, quote=False).split(" "):
        if word.startswith("#") and len(word) > 1:
            word = HASHTAG_HTML.format(word[1:])
        elif word.startswith("@") and len(word) > 1:
            word = MENTION_HTML.format(word[1:])
        words.append(word)
    return "<p>" + " ".join(words) + "</p>"


def mastodon_document(posts: Sequence[Record]) -> bytes:
    """One post as a Mastodon status."""
    (post,) = posts
    return orjson.dumps(
        {
            "id": post["post_id"],
            "created_at": iso_z(post["created_at_ms"]),
            "content": mastodon_html(post["text"]),
            "account": {"id": "1", "username": post["author"], "acct": post["author"]},
            "favourites_count": post["likes"],
            "reblogs_count": post["shares"],
            "visibility": "public",
        }
    )


NETWORK_FORMATS: dict[str, Callable[[Sequence[Record]], bytes]] = {
    "x": x_document,
    "mastodon": mastodon_document,
}


def metric_batches(
    rng: random.Random,
    *,
    servers: int = 20,
    metrics: int = 6,
    clock_ms: Callable[[], int],
    tenants: Sequence[str] = DEFAULT_TENANTS,
) -> Iterator[Record]:
    """Endless batches: each is one server's value of every metric at one instant; every
    tenant of `tenants` has the same server ids, each in turn."""
    names = [METRIC_NAMES[i] if i < len(METRIC_NAMES) else f"metric.{i}" for i in range(metrics)]
    for number in itertools.count():
        server = number % servers
        now = clock_ms()
        yield {
            "server_id": f"server-{server:04d}",
            "sent_at_ms": now,
            "tenant": tenants[number // servers % len(tenants)],
            "samples": [
                {"metric_id": name, "ts_ms": now, "value": round(rng.uniform(0, 100), 3)}
                for name in names
            ],
        }


#: A feed gives up when the broker has acknowledged nothing for this long (the producer's
#: request timeout: its sends fail after it).
ACK_TIMEOUT_S = 15.0
#: Messages sent and not yet acknowledged, at most.
MAX_IN_FLIGHT = 10_000


@dataclass
class FeedProgress:
    """Counts for the progress line: sent, and acknowledged by the broker."""

    name: str
    sent: int = 0
    acked: int = 0
    started: float = 0.0

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (
            f"{self.name}: sent {self.sent}, acknowledged {self.acked} "
            f"({self.acked / elapsed:,.0f}/s)"
        )


class Acks:
    """The acknowledgements of sent messages, in order: counted as they come; a failed one
    (the broker was gone for the producer's whole request timeout) ends the feed."""

    def __init__(self, progress: FeedProgress) -> None:
        self.progress = progress
        self.pending: deque[asyncio.Future[object]] = deque()

    def add(self, ack: asyncio.Future[object]) -> None:
        self.pending.append(ack)
        self.progress.sent += 1

    async def settle(self, wait_all: bool = False) -> None:
        """Count the acknowledgements in; wait while too many are pending (or, with
        `wait_all`, until none is). `BrokerError` when one failed."""
        while self.pending and (
            self.pending[0].done() or wait_all or len(self.pending) >= MAX_IN_FLIGHT
        ):
            try:
                await self.pending.popleft()
            except KafkaError as exc:
                raise BrokerError(
                    f"the broker did not acknowledge for {ACK_TIMEOUT_S:.0f} s "
                    f"({type(exc).__name__}); {self.progress.line()}"
                ) from exc
            self.progress.acked += 1


STREETS = ("Oak St", "Main St", "Elm Ave", "Park Rd", "Lake Dr", "Hill Ln", "Pine Ct")


@dataclass
class Shopper:
    """A customer of the order feed: its own cards, devices and home address."""

    customer_id: str
    cards: list[str]
    devices: list[str]
    address: str
    typical_cents: int


def orders(
    rng: random.Random,
    *,
    clock_ms: Callable[[], int],
    tenants: Sequence[str] = DEFAULT_TENANTS,
    customers: int = 10_000,
    fraud_share: float = 0.01,
) -> Iterator[tuple[Record, bool]]:
    """Endless orders, each with whether it is fraud (for training and checks; only the
    order is sent). Shoppers order with their own cards, devices and address, amounts
    around their usual; fraud comes as card testing (a stolen card, small amounts, many
    new accounts and devices in a burst), account takeover (a known customer, a new device
    and address, several times the usual amount) and device rings (one device, many new
    accounts)."""
    shoppers: dict[str, Shopper] = {}

    def shopper(number: int) -> Shopper:
        key = f"c{number:07d}"
        if key not in shoppers:
            shoppers[key] = Shopper(
                key,
                [f"card-{number}-{n}" for n in range(rng.choice((1, 1, 2)))],
                [f"dev-{number}-{n}" for n in range(rng.choice((1, 2)))],
                f"{rng.randrange(1, 999)} {rng.choice(STREETS)}, zone {number % 97}",
                rng.choice((1500, 3000, 6000, 12000)),
            )
        return shoppers[key]

    busy = zipf_weights(customers, 0.7)
    burst: list[tuple[str, str]] = []  # card testing or a ring: (card, device) to use next
    for number in itertools.count():
        tenant = tenants[number % len(tenants)]
        at = clock_ms()
        fraud = bool(burst) or rng.random() < fraud_share
        if not fraud:
            # Honest customers too send a gift elsewhere (a larger one, at times) or order
            # from a new phone: the model must weigh, not just match.
            who = shopper(rng.choices(range(customers), cum_weights=busy)[0])
            gift = rng.random() < 0.05
            order = (
                who.customer_id,
                rng.choice(who.cards),
                f"dev-new-{number}" if rng.random() < 0.05 else rng.choice(who.devices),
                f"{rng.randrange(9999)} Gift Ln" if gift else who.address,
                int(
                    who.typical_cents
                    * rng.lognormvariate(0, 0.4)
                    * (rng.choice((2, 3, 4)) if gift and rng.random() < 0.3 else 1)
                ),
            )
        else:
            kind = "burst" if burst else rng.choice(("testing", "takeover", "ring"))
            if kind == "takeover":
                who = shopper(rng.randrange(customers))
                order = (
                    who.customer_id,
                    rng.choice(who.cards),
                    f"dev-x{number}",
                    f"{rng.randrange(9999)} Drop Rd",
                    who.typical_cents * rng.randint(5, 12),
                )
            else:
                if kind != "burst":  # one stolen card on new devices, or one device's ring
                    burst = [
                        (
                            f"card-stolen-{number}" if kind == "testing" else f"card-x{number}-{n}",
                            f"dev-x{number}-{n}" if kind == "testing" else f"dev-ring-{number}",
                        )
                        for n in range(rng.randint(4, 9))
                    ]
                card, device = burst.pop()
                order = (
                    f"x{number}",
                    card,
                    device,
                    f"{rng.randrange(9999)} Drop Rd",
                    rng.choice((100, 199, 250, 500)),
                )
        customer, card, device, address, amount = order
        yield (
            {
                "order_id": f"o{number}-{rng.getrandbits(24):06x}",
                "customer_id": customer,
                "card_id": card,
                "device_id": device,
                "amount_cents": max(amount, 50),
                "currency": "USD",
                "shipping_address": address,
                "created_at_ms": at,
                "tenant": tenant,
            },
            fraud,
        )


@dataclass
class Browsing:
    """A session of the page-view feed: whose, the category it mostly looks at, views left."""

    session_id: str
    tenant: str
    category: int
    views_left: int


def page_views(
    rng: random.Random,
    *,
    clock_ms: Callable[[], int],
    tenants: Sequence[str] = DEFAULT_TENANTS,
    items: int = 2000,
    categories: int = 40,
    live_sessions: int = 200,
) -> Iterator[Record]:
    """Endless page views of `live_sessions` sessions at a time, each browsing 2 to 12
    items, mostly of one category (so items of a category are viewed together), one in ten
    a click; popular items (Zipf) are viewed most. A session that is done is replaced by a
    new one (ids s000000, s000001, ...); the `tenants` take turns by session."""
    per_category = items // categories
    cumulative = zipf_weights(per_category)

    def browsing(number: int) -> Browsing:
        tenant = tenants[number % len(tenants)]
        return Browsing(f"s{number:06d}", tenant, rng.randrange(categories), rng.randint(2, 12))

    sessions = [browsing(number) for number in range(live_sessions)]
    started = live_sessions
    while True:
        slot = rng.randrange(live_sessions)
        session = sessions[slot]
        category = session.category if rng.random() < 0.8 else rng.randrange(categories)
        rank = rng.choices(range(per_category), cum_weights=cumulative)[0]
        yield {
            "session_id": session.session_id,
            "item_id": f"item-{category * per_category + rank:05d}",
            "viewed_at_ms": clock_ms(),
            "kind": "click" if rng.random() < 0.1 else "view",
            "tenant": session.tenant,
        }
        session.views_left -= 1
        if session.views_left == 0:
            sessions[slot] = browsing(started)
            started += 1


#: Where the location feed's phones are, and the demo campaigns' zones (tally dev).
CITY_CENTRE = (52.52, 13.405)


def locations(
    rng: random.Random,
    *,
    clock_ms: Callable[[], int],
    tenants: Sequence[str] = DEFAULT_TENANTS,
    users: int = 5000,
    spread_m: float = 2000,
) -> Iterator[Record]:
    """Endless phone locations: `users` shoppers (the sales feed's customers, cust-000000,
    ...: their purchases choose their offers) walking around the city centre, each within
    `spread_m` of it, a few metres per report; the tenants take turns by user."""
    places: dict[int, tuple[float, float]] = {}
    while True:
        user = rng.randrange(users)
        lat, lon = places.get(user) or (
            CITY_CENTRE[0] + rng.uniform(-spread_m, spread_m) / 111_320,
            CITY_CENTRE[1] + rng.uniform(-spread_m, spread_m) / 67_800,
        )
        lat, lon = lat + rng.uniform(-30, 30) / 111_320, lon + rng.uniform(-30, 30) / 67_800
        places[user] = (lat, lon)
        yield {
            "user_id": f"cust-{user:06d}",
            "lat": lat,
            "lon": lon,
            "located_at_ms": clock_ms(),
            "tenant": tenants[user % len(tenants)],
        }


def demo_campaign(tenant: str, now_ms: int) -> dict[str, object]:
    """A year-long campaign of `tenant` around the city centre (`tally dev` publishes one per
    demo tenant): its best sellers' buyers get their own offer."""
    return {
        "campaign_id": f"{tenant or 'default'}-city-centre",
        "tenant": tenant,
        "zone": {"lat": CITY_CENTRE[0], "lon": CITY_CENTRE[1], "radius_m": 800},
        "valid_from_ms": now_ms - 3_600_000,
        "valid_to_ms": now_ms + 365 * 86_400_000,
        "budget": 100_000,
        "coupon_ttl_seconds": 900,
        "offers": [
            {"offer_id": "welcome", "text": "5 % off your next visit"},
            {
                "offer_id": "best-sellers",
                "text": "15 % off our best sellers",
                "items": [f"item-{n:05d}" for n in range(10)],
            },
        ],
    }


#: The share of pushed coupons the coupons feed's shoppers redeem.
REDEEMED_SHARE = 0.2


def redemptions(
    rng: random.Random, pushes: Iterable[Record], *, clock_ms: Callable[[], int]
) -> Iterator[Record]:
    """Redemptions of REDEEMED_SHARE of `pushes` (coupons as pushed): the shoppers who go in
    (so `make run` shows live redemption rates)."""
    for push in pushes:
        if rng.random() < REDEEMED_SHARE:
            yield {
                "coupon_id": push["coupon_id"],
                "redeemed_at_ms": clock_ms(),
                "tenant": push["tenant"],
            }


#: A message a feed sends: key, value, headers.
Message = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


def encoded(records: Iterator[Record], key_field: str, codec: AvroCodec) -> Iterator[Message]:
    """Records as messages: Avro values, keyed by one of their fields."""
    for record in records:
        yield str(record[key_field]).encode(), codec.dumps(record), []


def raw_messages(posts: Iterator[RawPost]) -> Iterator[Message]:
    """Raw posts as messages: keyed by brand, the channel in the `tally.channel` header."""
    for post in posts:
        yield post.brand.encode(), post.value, [("tally.channel", post.channel.encode())]


async def send_feed(
    producer: AIOKafkaProducer,
    *,
    topic: str,
    messages: Iterator[Message],
    rate: float,
    count: int = 0,
    progress: FeedProgress,
    report_every_s: float = 5.0,
    quiet: bool = False,
) -> int:
    """Send `count` messages (0 = until cancelled) at `rate` per second; returns how many the
    broker acknowledged. `BrokerError` when the broker stops acknowledging (the producer
    must have a request timeout of about ACK_TIMEOUT_S)."""
    progress.started = time.monotonic()
    next_report = progress.started + report_every_s
    interval = 1.0 / rate if rate > 0 else 0.0
    due = time.monotonic()
    acks = Acks(progress)
    for key, value, headers in messages:
        if count and progress.sent >= count:
            break
        try:
            ack = await producer.send(topic, value, key=key, headers=headers or None)
        except KafkaError as exc:  # no room to queue: nothing was acknowledged for long
            raise BrokerError(
                f"the broker takes no messages ({type(exc).__name__}); {progress.line()}"
            ) from exc
        acks.add(ack)
        await acks.settle()
        if interval:
            due += interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        now = time.monotonic()
        if not quiet and now >= next_report:
            print(progress.line(), file=sys.stderr, flush=True)
            next_report = now + report_every_s
    await acks.settle(wait_all=True)
    return progress.acked
