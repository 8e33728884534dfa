"""Query load with a standard tool: `wrk` (Debian's package; `make bench` installs it) against a
worker's endpoint, N connections for a few seconds; requests/s and the latency percentiles
wrk reports. Every answer must be a 2xx: a run with errors is refused, not quoted."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.harness import ACCESS

#: The answer the read benchmarks load: the precomputed top-10.
TOP10_PATH = "/api/sales/top"

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass
class QueryLoad:
    connections: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed: `make bench` installs it (Debian package wrk)")
    return found


def parse_wrk(output: str, connections: int) -> QueryLoad:
    """Requests/s and the 50th/99th percentiles from `wrk --latency` output."""
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    if errors or socket_errors:
        raise SystemExit(f"the query load had errors; not quoting it:\n{output}")

    def percentile(p: int) -> float:
        found = re.search(rf"^\s+{p}%\s+([0-9.]+)(us|ms|s)\s*$", output, re.M)
        if found is None:
            raise SystemExit(f"no {p}th percentile in wrk's output:\n{output}")
        return float(found.group(1)) * _UNITS_MS[found.group(2)]

    rate = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    if rate is None:
        raise SystemExit(f"no Requests/sec in wrk's output:\n{output}")
    return QueryLoad(connections, float(rate.group(1)), percentile(50), percentile(99))


#: wrk script offering a steady rate (`query_load(..., rate=)`).
PACED = Path(__file__).with_name("paced.lua")


def query_load(url: str, connections: int, seconds: int = 8, rate: int | None = None) -> QueryLoad:
    """As many requests as `connections` clients get answered, or `rate` requests/s offered
    by them (the latency at that load; the rate reached is reported); every request carries
    the run's operator token."""
    threads = min(2, connections)
    command = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    command += ["-H", f"Authorization: Bearer {ACCESS.operator_token}"]
    if rate is None:
        command.append(url)
    else:
        command += ["-s", str(PACED), url, "--", str(threads * 1000 / rate)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout, connections)
