"""Hostile HTTP against one worker while a separate process polls `/api/health` every 20 ms:
health latency (p50, p99, max) and the worker's memory (RSS), in a quiet phase and in a hostile
phase of the same run, so the ratio says what the hostile load costs.

The hostile phase sends, from four clients at once and in a loop: bodies of 200,000 tiny rows
(413 after 10,000), gzip bombs (1 MB inflating to 1 GiB), a gzip bomb on a GET, `Expect:
100-continue` with 5 MB declared, registry requests with 300-character subjects and 4,400-digit
versions; and it holds 50 connections that never finish their headers. Each run has a broker
and a worker of its own (a worker reads the whole dead-letters topic when it starts).

    python -m bench.hostile [--runs 3] [--seconds 20]

Targets (issue #17): health p99 <= 100 ms during the hostile phase; RSS growth <= 100 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.common import UNLIMITED, run_in_scratch
from tally.broker.local import LocalBroker, free_port
from tests.harness import ACCESS, Worker, bearer

#: The poller: a process of its own, so the attackers' work does not delay its clock.
POLLER = """
import http.client, json, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
took, statuses = [], {}
end = time.monotonic() + seconds
while time.monotonic() < end:
    started = time.perf_counter()
    try:
        conn.request("GET", "/api/health")
        response = conn.getresponse()
        response.read()
        status = response.status
    except OSError:
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        status = 0
    took.append(time.perf_counter() - started)
    statuses[status] = statuses.get(status, 0) + 1
    time.sleep(0.02)
print(json.dumps({"took": took, "statuses": statuses}))
"""


def bomb(inflated_mib: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * (1 << 20)
    return b"".join(packer.compress(chunk) for _ in range(inflated_mib)) + packer.flush()


@dataclass
class Phase:
    took_ms: list[float]
    statuses: dict[str, int]
    rss_mb: list[float]
    answered: Counter[int]

    def p(self, q: float) -> float:
        ordered = sorted(self.took_ms)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def attack(url: str, port: int, until: float, answered: Counter[int]) -> None:
    """Four clients sending hostile requests in a loop, and 50 half-open connections."""
    many_rows = b"[" + b",".join([b"1"] * 200_000) + b"]"
    packed = bomb(1024)
    json_type = {"Content-Type": "application/json"}
    gzip_type = {**json_type, "Content-Encoding": "gzip"}
    requests = [
        ("POST", "/api/ingest/purchases", many_rows, json_type),
        ("POST", "/api/ingest/purchases", packed, gzip_type),
        ("GET", "/api/sales/top", packed, gzip_type),
        ("GET", "/registry/subjects/" + "s" * 300 + "/versions", None, {}),
        ("GET", "/registry/subjects/purchases-value/versions/" + "9" * 4400, None, {}),
    ]
    half_open = []
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        half_open.append(sock)

    async def client(session: aiohttp.ClientSession, offset: int) -> None:
        turn = offset
        while time.monotonic() < until:
            method, path, body, headers = requests[turn % len(requests)]
            turn += 1
            async with session.request(method, url + path, data=body, headers=headers) as reply:
                await reply.read()
                answered[reply.status] += 1
            await asyncio.to_thread(expect_continue, port, answered)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        timeout=timeout, auto_decompress=False, headers=bearer(ACCESS.operator_token)
    ) as session:
        await asyncio.gather(*(client(session, n) for n in range(4)))
    for sock in half_open:
        sock.close()


def expect_continue(port: int, answered: Counter[int]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/ingest/purchases HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n"
        )
        head = sock.recv(64)
        answered[int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1") else 0] += 1


def phase(worker: Worker, seconds: float, hostile: bool) -> Phase:
    assert worker.process is not None
    pid = worker.process.pid
    poller = subprocess.Popen(
        [sys.executable, "-c", POLLER, str(worker.port), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    samples: list[float] = [rss_mb(pid)]
    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.wait(0.1):
            samples.append(rss_mb(pid))

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    answered: Counter[int] = Counter()
    if hostile:
        asyncio.run(attack(worker.url, worker.port, time.monotonic() + seconds, answered))
    out, _ = poller.communicate(timeout=seconds + 120)
    stop.set()
    sampler.join()
    samples.append(rss_mb(pid))
    polled = json.loads(out)
    return Phase([t * 1000 for t in polled["took"]], polled["statuses"], samples, answered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs; medians quoted")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    run_in_scratch(parser, "bench-hostile-", run_all)


def run_all(args: argparse.Namespace, root: Path) -> None:
    rows = []
    for run in range(args.runs):
        with LocalBroker("127.0.0.1", free_port(), log_path=root / f"broker{run}.log") as broker:
            worker = Worker(
                env={
                    "TALLY_BROKER": broker.url,
                    "TALLY_APP_ID": f"b{uuid.uuid4().hex[:8]}",
                    "TALLY_DATA_DIR": str(root / f"w{run}"),
                    "TALLY_SCHEMA_REGISTRY": (root / "registry").resolve().as_uri(),
                    "TALLY_PARTITIONS": "4",
                    "TALLY_STANDBY_REPLICAS": "0",
                    "TALLY_HTTP_HEADER_TIMEOUT_SECONDS": "5",
                    "TALLY_LOG_LEVEL": "warn",
                    **UNLIMITED,
                },
                log_path=root / f"w{run}.log",
            ).start()
            try:
                time.sleep(3)  # past the start's own allocations
                quiet = phase(worker, args.seconds, hostile=False)
                hostile = phase(worker, args.seconds, hostile=True)
            finally:
                worker.stop()
            row = {
                "quiet p50": quiet.p(0.5),
                "quiet p99": quiet.p(0.99),
                "hostile p50": hostile.p(0.5),
                "hostile p99": hostile.p(0.99),
                "hostile max": max(hostile.took_ms),
                "rss before": quiet.rss_mb[0],
                "rss growth": max(hostile.rss_mb) - quiet.rss_mb[0],
                "rss after": hostile.rss_mb[-1],
            }
            rows.append(row)
            print(
                f"run {run + 1}: health p99 quiet {row['quiet p99']:.1f} ms, hostile "
                f"{row['hostile p99']:.1f} ms (max {row['hostile max']:.0f} ms); RSS "
                f"{row['rss before']:.0f} MB -> peak +{row['rss growth']:.0f} MB; hostile "
                f"answers {dict(sorted(hostile.answered.items()))}; health statuses "
                f"{hostile.statuses}",
                flush=True,
            )
    med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    print(
        f"\nHostile HTTP, {args.runs} run(s) of {args.seconds:g} s per phase, medians\n"
        "| phase | health p50 | health p99 | health max |\n|---|---:|---:|---:|\n"
        f"| quiet | {med['quiet p50']:.1f} ms | {med['quiet p99']:.1f} ms | - |\n"
        f"| hostile | {med['hostile p50']:.1f} ms | {med['hostile p99']:.1f} ms | "
        f"{med['hostile max']:.0f} ms |\n"
        f"health p99 hostile / quiet: {med['hostile p99'] / med['quiet p99']:.2f}x "
        "(target: hostile p99 <= 100 ms)\n"
        f"worker RSS: {med['rss before']:.0f} MB before, peak growth {med['rss growth']:.0f} MB "
        f"(target <= 100 MB), {med['rss after']:.0f} MB after"
    )


if __name__ == "__main__":
    main()
