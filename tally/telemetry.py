"""Prometheus counters the pipelines update (per batch, not per event); served at /metrics."""

from __future__ import annotations

import collections

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "tally_events",
    "Events by source topic and outcome: counted, late, stale (older than their pipeline's "
    "time to live on arrival: not processed, on late-events), rejected (dead-lettered), "
    "redelivered (already in the state: skipped), duplicate (messages handed over more "
    "than once in one batch: processed once), or forwarded (came on another partition than "
    "their key's: sent on to its owner).",
    ["topic", "outcome"],
)
DEAD_LETTERS_SENT = Counter(
    "tally_dead_letters",
    "Rejects: messages and rows sent to dead-letters or late-events, by destination and rule "
    "(the kind of wrong: missing_field, wrong_type, not_finite, late, ...).",
    ["destination", "rule"],
)
INGEST_REQUESTS = Counter(
    "tally_ingest_requests",
    "Requests to POST /api/ingest/{endpoint}, by endpoint and HTTP status.",
    ["endpoint", "status"],
)
INGEST_ROWS = Counter(
    "tally_ingest_rows",
    "Rows of ingest requests, by endpoint and outcome: accepted (in Kafka) or rejected.",
    ["endpoint", "outcome"],
)
INGEST_SECONDS = Histogram(
    "tally_ingest_seconds",
    "Time to answer an ingest request, acknowledgements included, by endpoint.",
    ["endpoint"],
)
LIVE_CLIENTS = Gauge(
    "tally_live_clients", "Clients connected to live streams (/api/stream/*) on this worker."
)
LIVE_FEEDS = Gauge(
    "tally_live_feeds", "Distinct live streams polled on this worker (one poll serves all clients)."
)
LIVE_RESETS = Counter(
    "tally_live_resets",
    "Clients so far behind that their pending updates were replaced by one fresh snapshot.",
)
TASK_FAILURES = Counter(
    "tally_task_failures",
    "Runs of a timer that raised (logged, and run again at its next interval), by timer.",
    ["task"],
)
CELL_WRITES = Counter(
    "tally_cell_writes",
    "Table cells written out by the write-behind cache (each a RocksDB put in a write batch "
    "and a changelog record), by table: compare with tally_events_total to see the coalescing.",
    ["table"],
)
WRITE_OUT_SECONDS = Histogram(
    "tally_write_out_seconds",
    "Time each write-out of the cell cache took (RocksDB write batches, changelog records "
    "handed to the Kafka client; not the wait for their acknowledgements), by what "
    "asked for it: commit (the flush before a commit, a rebalance or a stop) or cells (the "
    "cache full or quiet, or written after every batch when off or in transactions). The "
    "table writes the cache puts off are paid here; write-outs run one at a time, so their "
    "times add up.",
    ["kind"],
)
OFFLOADED = Counter(
    "tally_offloaded_messages",
    "Messages handed to the worker's offload processes (TALLY_OFFLOAD_PROCESSES) ahead of "
    "their batch, by topic and by who made their call: process, loop (the loop made it "
    "rather than wait: the process had not started it, or was stuck on it), or none (the "
    "call failed or its process died: the loop did the work as without the process).",
    ["topic", "made"],
)
PREFOLDED = Counter(
    "tally_prefolded_messages",
    "Metric batches folded by minute ahead of their batch (tally_offloaded_messages_total), "
    "by outcome: folded (merged as they were) or taken back (decoded and folded again, "
    "sample by sample: a late, crowded or redelivered sample, a time ahead of the clock, "
    "or a server another partition owns). Batches with an invalid sample are never folded "
    "ahead.",
    ["outcome"],
)
QUERY_ANSWERS = Counter(
    "tally_query_answers",
    "Answers of the query views (/api/sales/*, /api/servers/*, /api/metrics/*) this worker "
    "sent, by pipeline and HTTP status: 304s are revalidations a cache (nginx, a browser) "
    "made with the ETag of an answer it holds.",
    ["pipeline", "status"],
)
#: QUERY_ANSWERS as plain counts by (pipeline, status), moved into it when /metrics is
#: scraped (tally.web.prometheus): a labelled update per answer was ~3 % of a worker
#: answering the top-10.
query_answers: collections.Counter[tuple[str, int]] = collections.Counter()
BROKER_UP = Gauge(
    "tally_broker_reachable",
    "1 while a broker of TALLY_BROKER takes connections (checked twice a second), else 0.",
)
COPY_RECORDS_BEHIND = Gauge(
    "tally_copy_records_behind",
    "A reader's copies of a pipeline's tables: changelog records the broker has that they do "
    "not, as of the last fetch.",
    ["pipeline"],
)
SOCIAL_POSTS = Counter(
    "tally_social_posts",
    "Social posts scored, by channel and VADER sentiment class (positive, neutral, negative).",
    ["channel", "sentiment"],
)
SOCIAL_ALERTS = Counter(
    "tally_social_alerts",
    "Social alert transitions: opened (by the pipeline), acked and resolved (by people).",
    ["transition"],
)
FRAUD_DECISIONS = Counter(
    "tally_fraud_decisions",
    "Orders decided, by decision (approve, review, reject) and by whom: the model, or a "
    "person deciding a reviewed order.",
    ["decision", "by"],
)
EXPIRED = Counter(
    "tally_expired",
    "Keys whose time to live passed (sessions without a view for TALLY_SESSION_TTL_SECONDS), "
    "removed by the expiry sweep on the partition's active worker, by table.",
    ["table"],
)
