"""Every setting Tally reads, from the environment, in one place.

Each field names its environment variable and default; `Settings.from_env()` is called once
(by `tally.app`) and the rest of the code only consumes the frozen result.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tally.core.errors import ConfigurationError
from tally.core.limits import DEFAULT_TENANT, TENANT_PATTERN

#: Broker URL schemes and what they mean. `tansu` = the local broker, with the compatibility shim.
BROKER_SCHEMES = ("tansu", "kafka")
PROCESSING_GUARANTEES = ("at_least_once", "exactly_once")
LOG_LEVELS = ("crit", "error", "warn", "info", "debug")
#: The event loops a Tally process can run on → mode's name for each (FAUST_LOOP).
EVENT_LOOPS = {"uvloop": "uvloop", "asyncio": "aio"}
RESTORE_MODES = ("bulk", "faust")
AUTH_MODES = ("on", "off")


def _env_field(env: str, default: Any, doc: str, parse: Callable[[str], Any] = str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc, "parse": parse})


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number") from None
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _positive_int(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text)
    if not value >= 0:
        raise ValueError("must be 0 or more")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise ValueError("must be more than 0")
    return value


def _top_k(text: str) -> int:
    value = _positive_int(text)
    if value > 1000:
        raise ValueError("must be at most 1000 (each partition publishes its top-K in one message)")
    return value


def _tenant(text: str) -> str:
    if not TENANT_PATTERN.fullmatch(text):
        raise ValueError("must be 1 to 64 letters, digits, '.', '_' or '-'")
    return text


def _port(text: str) -> int:
    value = _whole(text)
    if not 0 < value < 65536:
        raise ValueError("must be a TCP port (1-65535)")
    return value


def broker_urls(text: str) -> list[str]:
    """The URLs of a broker list: separated by ';' or ','; a bare host:port takes the
    scheme of the first URL (Faust's convention)."""
    urls = [part.strip() for part in re.split(r"[;,]", text) if part.strip()]
    scheme = urlsplit(urls[0]).scheme if urls else ""
    return [url if "://" in url else f"{scheme}://{url}" for url in urls]


#: Units of a retention like "5y": days per unit (a year is 365 days).
_DAYS_PER = {"d": 1, "w": 7, "y": 365}


def retention_days(text: str) -> int:
    """Days in a retention such as "5y", "26w" or "30d"."""
    match = re.fullmatch(r"\s*(\d+)\s*([dwy])\s*", text)
    if match is None or int(match.group(1)) < 1:
        raise ValueError("must be a duration like 5y, 26w or 30d (years of 365 days)")
    return int(match.group(1)) * _DAYS_PER[match.group(2)]


_SECONDS_PER = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float:
    """Seconds in a duration such as "15s", "500ms", "2m" or "1h" (a bare number is seconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError("must be a positive duration like 15s, 500ms, 2m or 1h")
    return float(match.group(1)) * _SECONDS_PER[match.group(2) or "s"]


def _broker_url(text: str) -> str:
    urls = broker_urls(text)
    if not urls:
        raise ValueError("no broker URL given")
    if "://" not in re.split(r"[;,]", text.strip())[0]:
        raise ValueError(
            "needs a scheme: tansu://HOST:PORT for the local broker or kafka://HOST:PORT "
            "for Apache Kafka"
        )
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in BROKER_SCHEMES or not parts.hostname:
            raise ValueError(
                f"{url!r} is not a broker URL; use tansu://HOST:PORT for the local broker "
                "or kafka://HOST:PORT for Apache Kafka"
            )
    if len({urlsplit(url).scheme for url in urls}) > 1:
        raise ValueError("all brokers must use the same scheme (tansu:// or kafka://)")
    return text


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


#: What a worker does: processes its pipelines in the consumer group, or serves reads only.
ROLES = ("process", "read")


def _url_list(text: str) -> tuple[str, ...]:
    urls = tuple(part.strip().rstrip("/") for part in text.split(",") if part.strip())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
    return urls


#: The pipelines a worker can run: `archive` is the metrics pipeline's cold-tier sink.
PIPELINES = (
    "sales",
    "metrics",
    "archive",
    "merchants",
    "social",
    "fraud",
    "recommendations",
    "coupons",
)
#: What a worker runs unless told: the merchants pipeline reads every purchase a second
#: time, so a deployment turns it on (TALLY_PIPELINES) where merchants query their own figures.
DEFAULT_PIPELINES = frozenset(("sales", "metrics", "archive"))


def _module_list(text: str) -> tuple[str, ...]:
    modules = tuple(part.strip() for part in text.split(",") if part.strip())
    for module in modules:
        if not all(part.isidentifier() for part in module.split(".")):
            raise ValueError(f"{module!r} is not a Python module path (e.g. mycompany.forum)")
    return modules


def pipeline_set(text: str) -> frozenset[str]:
    names = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(names - set(PIPELINES))
    if unknown or not names:
        raise ValueError(
            f"{', '.join(unknown) or 'nothing'} is not a pipeline; list some of "
            f"{', '.join(PIPELINES)}, separated by commas"
        )
    return names


@dataclass(frozen=True)
class Settings:
    """Tally's configuration; the README's configuration table describes each (a test checks
    that every variable is there)."""

    broker: str = _env_field(
        "TALLY_BROKER",
        "tansu://127.0.0.1:9092",
        "Broker URL: tansu://host:port (local broker, with the compatibility shim) or "
        "kafka://host:port (Apache Kafka). Several brokers: separate with ';' or ','.",
        _broker_url,
    )
    app_id: str = _env_field(
        "TALLY_APP_ID",
        "tally",
        "The deployment's name: generation 1's Faust app id (consumer group, prefix of "
        "changelogs), and the prefix of the serving topic <id>-serving.",
    )
    generation: int = _env_field(
        "TALLY_GENERATION",
        1,
        "Which build of the tables this worker runs. Generation 1 uses TALLY_APP_ID as is; "
        "`tally replay` builds generation N under TALLY_APP_ID-gN (own consumer group, "
        "changelogs and internal topics) and then cuts queries over to it.",
        _positive_int,
    )
    pipelines: frozenset[str] = _env_field(
        "TALLY_PIPELINES",
        DEFAULT_PIPELINES,
        "The pipelines this worker runs, comma-separated: sales, metrics, archive (the "
        "cold-tier sink of metrics), merchants (each merchant's own figures; off unless "
        "named), social (social posts' sentiment, alerts and summaries; off unless named), fraud "
        "(orders decided by a model published while workers run; off unless named), "
        "recommendations (items viewed together, sessions' items with a time to live; off "
        "unless named), coupons (location coupons of campaigns by zone, pushed once per user "
        "and campaign; off unless named). "
        "Its web server answers the queries of those it runs.",
        pipeline_set,
    )
    role: str = _env_field(
        "TALLY_ROLE",
        "process",
        "process: the worker joins the consumer group and runs its pipelines. read: it only "
        "answers queries of the merchants pipeline (TALLY_PIPELINES=merchants), from copies "
        "of its tables that it follows in their changelogs outside the group: add readers to "
        "serve more queries without touching ingest.",
        _one_of(ROLES),
    )
    processing_urls: tuple[str, ...] = _env_field(
        "TALLY_PROCESSING_URLS",
        (),
        "A reader's processing workers (comma-separated base URLs, e.g. http://w1:6066): "
        "where it forwards a query that asks for ?consistency=owner. Empty: such a query is "
        "a 409 that says to ask a processing worker.",
        _url_list,
    )
    data_dir: Path = _env_field(  # noqa: RUF009 (a field(), not a shared default)
        "TALLY_DATA_DIR", Path("data"), "Where the worker keeps RocksDB tables.", Path
    )
    web_host: str = _env_field("TALLY_WEB_HOST", "127.0.0.1", "Web server bind address.")
    web_advertised_host: str = _env_field(
        "TALLY_WEB_ADVERTISED_HOST",
        "",
        "Host name other workers use to forward queries here. Empty: TALLY_WEB_HOST, or this "
        "machine's host name when TALLY_WEB_HOST is 0.0.0.0.",
    )
    web_port: int = _env_field("TALLY_WEB_PORT", 6066, "Web server port.", _port)
    partitions: int = _env_field(
        "TALLY_PARTITIONS", 4, "Partitions of every topic Tally creates.", _positive_int
    )
    replication: int = _env_field(
        "TALLY_REPLICATION", 1, "Replication factor of topics Tally creates.", _positive_int
    )
    standby_replicas: int = _env_field(
        "TALLY_STANDBY_REPLICAS",
        1,
        "Standby copies of every table partition kept by other workers.",
        _non_negative_int,
    )
    restore: str = _env_field(
        "TALLY_RESTORE",
        "bulk",
        "How a worker rebuilds table partitions it takes over from their changelogs. bulk: "
        "large fetches written as RocksDB write batches (see docs/performance.md); faust: "
        "Faust's own record-at-a-time recovery (a fallback).",
        _one_of(RESTORE_MODES),
    )
    producer_linger_ms: int = _env_field(
        "TALLY_PRODUCER_LINGER_MS",
        5,
        "How long the worker's producer holds records to send them as one batch (Kafka 4.0's "
        "default). Changelogs written a few records to a batch make every later restore pay "
        "per batch: with 0 (Faust's default) restores ran 26x slower (see "
        "docs/performance.md).",
        _non_negative_int,
    )
    processing_guarantee: str = _env_field(
        "TALLY_PROCESSING_GUARANTEE",
        "at_least_once",
        "at_least_once (state is idempotent: redelivered messages count once) or "
        "exactly_once (Kafka transactions; kafka:// brokers only).",
        _one_of(PROCESSING_GUARANTEES),
    )
    schema_registry: str = _env_field(
        "TALLY_SCHEMA_REGISTRY",
        "",
        "Empty: the embedded file registry under TALLY_DATA_DIR/schema-registry. "
        "file:///path: an embedded registry there. topic: (or topic:NAME): one registry for "
        "the whole deployment, kept on the broker in topic <TALLY_APP_ID>-schemas (or NAME); "
        "use it when workers run on several hosts. http(s)://host:port: a Confluent-compatible "
        "schema registry.",
    )
    grace_seconds: float = _env_field(
        "TALLY_GRACE_SECONDS",
        10.0,
        "Event-time grace: the watermark trails the newest event by this much.",
        _non_negative_float,
    )
    max_future_seconds: float = _env_field(
        "TALLY_MAX_FUTURE_SECONDS",
        300.0,
        "Events stamped further than this ahead of the worker's clock are rejected "
        "(dead-letters): one bad clock must not move event time for everyone.",
        _non_negative_float,
    )
    sales_pane_seconds: int = _env_field(
        "TALLY_SALES_PANE_SECONDS",
        3600,
        "Sales pane length: the window slides by this much (1 hour).",
        _positive_int,
    )
    sales_window_panes: int = _env_field(
        "TALLY_SALES_WINDOW_PANES",
        24,
        "Panes per sales window (24 x 1 hour = the last 24 hours).",
        _positive_int,
    )
    sales_retained_panes: int = _env_field(
        "TALLY_SALES_RETAINED_PANES",
        24,
        "Panes kept after they leave the window, for ?at= queries of past windows.",
        _non_negative_int,
    )
    top_k: int = _env_field(
        "TALLY_TOP_K",
        10,
        "Items each partition ranks and publishes; the largest ?k= (at most 1000).",
        _top_k,
    )
    cell_cache_cells: int = _env_field(
        "TALLY_CELL_CACHE_CELLS",
        2_000,
        "Table cells the write-behind cache holds before it writes them out (it also does "
        "before every commit of source offsets): a hot key is written once per flush however "
        "many events touch it. More coalesces more and holds more in memory. 0: written after "
        "every batch.",
        _non_negative_int,
    )
    offload_processes: int = _env_field(
        "TALLY_OFFLOAD_PROCESSES",
        1 if (os.cpu_count() or 1) > 1 else 0,
        "Processes beside the worker's event loop that decode and fold its metric batches "
        "ahead of the loop (started at the first batch; default 1, 0 on a one-core machine): "
        "the loop uses one core, and a second one took a worker's metrics from ~0.4x to "
        "~0.7x the raw consume+decode ceiling (bench.profile_metrics). 0: the loop does it "
        "all.",
        _non_negative_int,
    )
    gc_young_objects: int = _env_field(
        "TALLY_GC_YOUNG_OBJECTS",
        50_000,
        "New container objects (allocated less freed) between collections of CPython's young "
        "generation (CPython's own default: 700). Fewer collections let a batch's objects die "
        "before they reach the old generation, whose growth sets off full collections that "
        "pause the worker (tally_gc_pause_seconds). 0: CPython's defaults.",
        _non_negative_int,
    )
    malloc_trim_seconds: float = _env_field(
        "TALLY_MALLOC_TRIM_SECONDS",
        10.0,
        "How often the worker hands the memory it freed back to the system (glibc's "
        "malloc_trim; elsewhere nothing happens): glibc keeps it in the heap, counted in the "
        "worker's RSS (tally_malloc_trim_seconds times each). 0: never.",
        _non_negative_float,
    )
    cache_max_age_seconds: int = _env_field(
        "TALLY_CACHE_MAX_AGE_SECONDS",
        1,
        "How long HTTP caches may keep a query answer (Cache-Control max-age), in seconds. "
        "0: revalidate each time (the ETag still spares the body).",
        _non_negative_int,
    )
    cache_stale_seconds: int = _env_field(
        "TALLY_CACHE_STALE_SECONDS",
        1,
        "How long past its max-age a cache may still answer with a copy while it fetches the "
        "next one (Cache-Control stale-while-revalidate), in seconds: one request reaches the "
        "worker when a hot answer expires, not every reader arriving meanwhile. A cached "
        "answer is at most max-age plus this old. 0: never past its max-age.",
        _non_negative_int,
    )
    heartbeat_seconds: float = _env_field(
        "TALLY_HEARTBEAT_SECONDS",
        5.0,
        "Partitions re-publish their top-K at least this often; an answer older than 3x "
        "this is flagged stale.",
        _positive_float,
    )
    stream_poll_seconds: float = _env_field(
        "TALLY_STREAM_POLL_SECONDS",
        0.5,
        "Live streams (`/api/stream/*`, the dashboard) re-run their query this often on each "
        "worker, once for all the clients of a stream.",
        _positive_float,
    )
    merchants_hot_hours: int = _env_field(
        "TALLY_MERCHANTS_HOT_HOURS",
        48,
        "Merchant-hours kept in the hot tables (RocksDB), by event time (at least the sales "
        "window plus its retained panes); older hours are answered from the archive.",
        _positive_int,
    )
    merchants_hot_days: int = _env_field(
        "TALLY_MERCHANTS_HOT_DAYS",
        35,
        "Merchant-days (each final day's figures, merged from its hours) kept in the hot "
        "tables: a daily, weekly or monthly answer within them reads a cell per day; older "
        "days are answered from the archive's hours.",
        _positive_int,
    )
    social_alert_threshold: float = _env_field(
        "TALLY_SOCIAL_ALERT_THRESHOLD",
        -1.0,
        "A negative post becomes an alert when its VADER compound score times "
        "1 + log10(1 + reach) is at or below this (reach: likes + 5 x shares). -1.0: a post "
        "nobody shared must score -1; one that reached 1,000 people, -0.25.",
        _number,
    )
    social_hot_hours: int = _env_field(
        "TALLY_SOCIAL_HOT_HOURS",
        48,
        "Minutes of social summaries (and the post ids seen in them, which make a post "
        "counted once) kept, by event time: a post older than this behind the newest of its "
        "partition is late (to late-events).",
        _positive_int,
    )
    session_ttl_seconds: int = _env_field(
        "TALLY_SESSION_TTL_SECONDS",
        1800,
        "How long a browsing session lives after its last page view, by event time: then its "
        "items are gone (reads at once, storage at the next sweep); a view older than this "
        "behind its partition's clock is stale (to late-events, not processed).",
        _positive_int,
    )
    location_ttl_seconds: int = _env_field(
        "TALLY_LOCATION_TTL_SECONDS",
        60,
        "How old a phone's location may be when the coupons pipeline reads it (now minus its "
        "time): an older one is stale (to late-events, counted, never a push): a coupon for "
        "where a phone was minutes ago has no value.",
        _positive_int,
    )
    social_channels: tuple[str, ...] = _env_field(
        "TALLY_SOCIAL_CHANNELS",
        (),
        "Channel adapters beyond the shipped ones (x, mastodon): comma-separated Python "
        "modules, each with CHANNEL (its name, as raw posts' tally.channel header gives it) "
        "and adapt(document) -> list of posts (see docs/social.md).",
        _module_list,
    )
    metrics_hot_hours: float = _env_field(
        "TALLY_METRICS_HOT_HOURS",
        48.0,
        "Metric rollups kept in the hot tables (RocksDB), by event time; older minutes are "
        "answered from the archive.",
        _positive_float,
    )
    archive_dir: str = _env_field(
        "TALLY_ARCHIVE_DIR",
        "",
        "Where final minutes are archived as Parquet (one directory per day). Empty: "
        "TALLY_DATA_DIR/archive. A path, or s3://bucket/prefix (S3-compatible stores: "
        "add ?endpoint_override=host:port). Workers that share a deployment share this.",
    )
    archive_flush_seconds: float = _env_field(
        "TALLY_ARCHIVE_FLUSH_SECONDS",
        60.0,
        "The archive sink writes a file per partition and day at least this often (sooner "
        "when 5,000 final server-minutes are waiting).",
        _positive_float,
    )
    archive_keep: int = _env_field(
        "TALLY_ARCHIVE_KEEP",
        5 * 365,
        "Archive retention: whole days older than this are dropped (hourly, by the leader). "
        "A duration: 5y, 26w, 30d.",
        retention_days,
    )
    ingest_max_bytes: int = _env_field(
        "TALLY_INGEST_MAX_BYTES",
        4 * 1024 * 1024,
        "Largest body POST /api/ingest/* reads; larger ones get a 413.",
        _positive_int,
    )
    ingest_max_age_hours: float = _env_field(
        "TALLY_INGEST_MAX_AGE_HOURS",
        168.0,
        "Ingest rejects rows stamped more than this before now (seconds sent as milliseconds, "
        "a wrong clock); rows ahead of now are bounded by TALLY_MAX_FUTURE_SECONDS. Replays of "
        "older history go to Kafka directly.",
        _positive_float,
    )
    ingest_ack_timeout_seconds: float = _env_field(
        "TALLY_INGEST_ACK_TIMEOUT_SECONDS",
        10.0,
        "An ingest request waits this long for the broker to acknowledge its rows, then "
        "answers 503.",
        _positive_float,
    )
    ingest_max_rows: int = _env_field(
        "TALLY_INGEST_MAX_ROWS",
        10_000,
        "Most rows one POST /api/ingest/* may hold; a body with more gets a 413 (split it).",
        _positive_int,
    )
    http_header_timeout_seconds: float = _env_field(
        "TALLY_HTTP_HEADER_TIMEOUT_SECONDS",
        15.0,
        "A web connection that has not sent a whole request line and headers this long after "
        "opening (or after its last answer) is closed: half-sent headers hold nothing.",
        _positive_float,
    )
    stop_timeout_seconds: float = _env_field(
        "TALLY_STOP_TIMEOUT_SECONDS",
        25.0,
        "A worker asked to stop (SIGTERM, Ctrl-C) exits after this long even if the broker "
        "is gone and a clean stop cannot finish; what it did not commit is processed again "
        "after the restart (state is idempotent).",
        _positive_float,
    )
    auth: str = _env_field(
        "TALLY_AUTH",
        "on",
        "on: every endpoint but health, the API document and the dashboard's page needs a "
        "bearer token (docs/operations.md, Access control). off: anyone who reaches the port "
        "may do anything (a closed network only).",
        _one_of(AUTH_MODES),
    )
    auth_key_file: str = _env_field(
        "TALLY_AUTH_KEY_FILE",
        "",
        "The deployment's own token signing key (an Ed25519 JWK, created on first use, "
        "readable by its owner only): `tally tokens issue` signs with it, workers verify with "
        "it. Empty: ~/.config/tally/<TALLY_APP_ID>-signing-key.jwk, shared by every worker "
        "of the deployment on this machine. Workers on several hosts: give each the same "
        "file, or give them TALLY_AUTH_JWKS (`tally tokens jwks` prints the public key).",
    )
    auth_jwks: str = _env_field(
        "TALLY_AUTH_JWKS",
        "",
        "Also take tokens signed by these keys: a JSON Web Key Set file or https URL (an "
        "identity provider's; fetched again when a token names a key it does not hold, at most "
        "once a minute). With it, workers do not create TALLY_AUTH_KEY_FILE.",
    )
    auth_issuer: str = _env_field(
        "TALLY_AUTH_ISSUER",
        "",
        "When set, a token must carry this issuer (`iss`): with TALLY_AUTH_JWKS, the provider's "
        "issuer URL. `tally tokens issue` stamps it.",
    )
    auth_audience: str = _env_field(
        "TALLY_AUTH_AUDIENCE",
        "",
        "When set, a token must be meant for this audience (`aud`), so that a token the same "
        "provider issued for another application is refused. `tally tokens issue` stamps it.",
    )
    auth_rate: float = _env_field(
        "TALLY_AUTH_RATE",
        100.0,
        "Requests per second one token may make to one server (twice that at once); more get "
        "429 with Retry-After. 0: no limit.",
        _non_negative_float,
    )
    default_tenant: str = _env_field(
        "TALLY_DEFAULT_TENANT",
        DEFAULT_TENANT,
        "The tenant whose data this deployment holds: rows written without a tenant are its.",
        _tenant,
    )
    fault_crash_on: str = _env_field(
        "TALLY_FAULT_CRASH_ON",
        "",
        "Fault injection for tests and drills: a worker processing a source message whose "
        "bytes contain this text exits at once (code 70), as a crash would. Empty: off.",
    )
    fault_drop_fetched: str = _env_field(
        "TALLY_FAULT_DROP_FETCHED",
        "",
        "Fault injection for tests and drills: a fetched message of an agent's topic (a "
        "source, or a copy forwarded between stages) whose bytes contain this text is dropped "
        "the first time, before Faust sees it, as Faust drops messages fetched around a "
        "rebalance; the worker must notice and read it again. Empty: off.",
    )
    log_level: str = _env_field(
        "TALLY_LOG_LEVEL",
        "info",
        "Worker log level: crit, error, warn, info or debug.",
        _one_of(LOG_LEVELS),
    )
    event_loop: str = _env_field(
        "TALLY_EVENT_LOOP",
        "uvloop",
        "The event loop of every Tally process: uvloop (the one Faust recommends; faster "
        "answers, see docs/performance.md#uvloop) or asyncio (the standard library's).",
        _one_of(tuple(EVENT_LOOPS)),
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting; a bad value raises one error naming the variable and the rule."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = environ.get(spec.metadata["env"])
            if raw is None or raw == "":
                continue
            try:
                values[spec.name] = spec.metadata["parse"](raw)
            except ValueError as exc:
                raise ConfigurationError(f"{spec.metadata['env']}={raw!r}: {exc}") from exc
        settings = cls(**values)
        if settings.processing_guarantee == "exactly_once" and settings.uses_local_broker:
            raise ConfigurationError(
                "TALLY_PROCESSING_GUARANTEE=exactly_once needs Kafka transactions, which the "
                "local broker (tansu://) does not have (no InitProducerId); use at_least_once "
                "there (state is idempotent: a redelivered message is counted once), or a "
                "kafka:// broker"
            )
        if settings.role == "read" and settings.pipelines != {"merchants"}:
            raise ConfigurationError(
                "TALLY_ROLE=read serves the merchants pipeline's queries only: set "
                "TALLY_PIPELINES=merchants (the other pipelines answer from their owners' "
                "windows in memory, which a reader does not have)"
            )
        return settings

    @property
    def reads_only(self) -> bool:
        """A reader: no consumer group, no processing; tables followed in their changelogs."""
        return self.role == "read"

    @property
    def faust_app_id(self) -> str:
        """Consumer group and prefix of changelogs: one per generation."""
        return self.app_id if self.generation == 1 else f"{self.app_id}-g{self.generation}"

    def generation_topic(self, name: str) -> str:
        """A topic one generation writes and reads for itself (internal and derived topics),
        so that a replay never writes into the topics the serving generation reads."""
        return name if self.generation == 1 else f"{name}.g{self.generation}"

    @property
    def serving_topic(self) -> str:
        """Which generation serves each pipeline (one per deployment, compacted)."""
        return f"{self.app_id}-serving"

    @property
    def broker_urls(self) -> list[str]:
        return broker_urls(self.broker)

    @property
    def broker_scheme(self) -> str:
        return urlsplit(self.broker_urls[0]).scheme

    @property
    def uses_local_broker(self) -> bool:
        return self.broker_scheme == "tansu"

    @property
    def bootstrap_servers(self) -> list[str]:
        """host:port of each broker, for plain aiokafka clients (feed, benchmarks, tests)."""
        return [urlsplit(url).netloc for url in self.broker_urls]

    @property
    def registry_url(self) -> str:
        return self.schema_registry or (self.data_dir / "schema-registry").resolve().as_uri()

    @property
    def merchants_hot_ms(self) -> int:
        """How long merchant-hours stay in the hot table, by event time: never less than the
        sales window, its retained panes and one pane more (an hour leaves the window final
        and goes to the archive sink; it leaves the hot table at least a pane of event time
        later. The sink writes within TALLY_ARCHIVE_FLUSH_SECONDS of wall time: a backlog
        read faster than a pane per flush can delete an hour before the archive holds it,
        and queries miss it until it does)."""
        pane_ms = self.sales_pane_seconds * 1000
        panes = self.sales_window_panes + self.sales_retained_panes + 1
        grace_ms = int(self.grace_seconds * 1000)
        return max(self.merchants_hot_hours * 3_600_000, panes * pane_ms + grace_ms)

    @property
    def archive_location(self) -> str:
        return self.archive_dir or str((self.data_dir / "archive").resolve())

    @property
    def advertised_host(self) -> str:
        if self.web_advertised_host:
            return self.web_advertised_host
        if self.web_host in ("0.0.0.0", "::", ""):
            return socket.gethostname()
        return self.web_host

    @property
    def signing_key_path(self) -> Path:
        if self.auth_key_file:
            return Path(self.auth_key_file)
        return Path.home() / ".config" / "tally" / f"{self.app_id}-signing-key.jwk"

    @property
    def revocations_topic(self) -> str:
        """Revoked token ids (one per deployment, compacted; tally.access.revocations)."""
        return f"{self.app_id}-revoked-tokens"

    @property
    def faust_loop(self) -> str:
        """mode's name of `event_loop` (what FAUST_LOOP takes)."""
        return EVENT_LOOPS[self.event_loop]

    @property
    def web_url(self) -> str:
        return f"http://{self.advertised_host}:{self.web_port}"


@cache
def current_settings() -> Settings:
    """This process's settings, read from the environment once."""
    return Settings.from_env()


def shown(default: Any) -> str:
    """A default as the README's table shows it (pipelines in their usual order)."""
    if isinstance(default, frozenset):
        return ",".join(name for name in PIPELINES if name in default)
    if isinstance(default, tuple):
        return ",".join(default)
    return str(default)


def documented_settings() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for each setting: the README's configuration table."""
    return [
        (spec.metadata["env"], shown(spec.default), spec.metadata["doc"])
        for spec in fields(Settings)
    ]
