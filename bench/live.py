"""Live-stream benchmark: does a crowd of SSE clients, most of them stalled, slow the pipeline?

    .venv/bin/python -m bench.live [--count 40000] [--stalled 100] [--readers 10] [--runs 3]

Each run times the same single-purchase input twice on a fresh broker: once with no stream
clients (the baseline), once with `--stalled` clients that open `/api/stream/sales/top` or
`/api/stream/servers/server-0000` and never read, plus `--readers` clients reading the top-K
stream. Purchases/s are counted as in `bench.sales`, and the top-10 is checked against brute
force in both. The ratio (with clients / without) is taken run by run; 1.0 means the agents do
not notice the clients.
"""

from __future__ import annotations

import argparse
import random
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from bench.common import Result, report, run_tally
from bench.sales import END_MS, HOUR_MS, check_top, one_per_message
from tally.broker.local import LocalBroker, free_port
from tally.codecs.avro import AvroCodec, load_schema, validate_purchase
from tally.codecs.registry import FileSchemaRegistry
from tally.feed import historical_purchases
from tests.harness import EventStream, Worker

BASELINE = "baseline: no stream clients"


def stalled_client(port: int, path: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


@contextmanager
def stream_clients(worker: Worker, stalled: int, readers: int) -> Iterator[list[int]]:
    """`stalled` clients that never read and `readers` that count the events they get."""
    paths = ["/api/stream/sales/top", "/api/stream/servers/server-0000"]
    sockets = [stalled_client(worker.port, paths[n % 2]) for n in range(stalled)]
    received = [0] * readers
    streams = [EventStream(worker.url, paths[0]) for _ in range(readers)]

    def read(n: int) -> None:
        try:
            while True:
                streams[n].next(60)
                received[n] += 1
        except (OSError, ConnectionError, ValueError, AttributeError):  # closed mid-read
            return  # closed at the end of the run

    threads = [threading.Thread(target=read, args=(n,), daemon=True) for n in range(readers)]
    for thread in threads:
        thread.start()
    try:
        yield received
    finally:
        for sock in sockets:
            sock.close()
        for stream in streams:
            stream.close()


@contextmanager
def clients_for(
    label: str, args: argparse.Namespace, received: list[int], worker: Worker
) -> Iterator[None]:
    """None for the baseline; otherwise the clients, their event counts left in `received`."""
    if label == BASELINE:
        yield
        return
    with stream_clients(worker, args.stalled, args.readers) as counts:
        yield
        received.extend(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=40_000, help="single purchases per run")
    parser.add_argument("--stalled", type=int, default=100, help="clients that never read")
    parser.add_argument("--readers", type=int, default=10, help="clients reading the top-K")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tally-bench-"))
    registry = FileSchemaRegistry(workdir / "registry")
    codec = AvroCodec(registry, "purchases-value", load_schema("purchase"), validate_purchase)
    events = historical_purchases(
        random.Random(42), count=args.count, items=1_000, end_ms=END_MS, span_ms=30 * HOUR_MS
    )
    messages = one_per_message(codec, events)
    loaded = f"tally with {args.stalled} stalled + {args.readers} reading SSE clients"
    print(
        f"live-stream benchmark: {args.count:,} single purchases per run, {args.runs} run(s); "
        f"'{BASELINE}' vs '{loaded}'",
        flush=True,
    )
    results: dict[str, list[Result]] = {BASELINE: [], loaded: []}
    for run in range(1, args.runs + 1):
        for label in (BASELINE, loaded):
            received: list[int] = []
            with LocalBroker("127.0.0.1", free_port(), log_path=workdir / "broker.log") as broker:
                result = run_tally(
                    broker,
                    workdir,
                    label,
                    "purchases",
                    messages,
                    len(events),
                    partial(check_top, events=events, label=label),
                    beside=partial(clients_for, label, args, received),
                )
            results[label].append(result)
            extra = f", readers got {min(received)}-{max(received)} events" if received else ""
            print(f"  run {run}: {label}: {result.rate:,.0f} purchases/s{extra}", flush=True)
    report("live streams", results, "purchases", [BASELINE])


if __name__ == "__main__":
    main()
