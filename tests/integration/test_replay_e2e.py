"""`tally replay` through the real broker: a pipeline rebuilt after a logic fix, then cut over.

Generation 1 runs with a deliberate bug in one pipeline (sales: every purchase counted as one
unit; metrics: every value doubled), patched in at interpreter start through `sitecustomize`.
`tally replay` rebuilds that pipeline's tables with the fixed code as generation 2 while
generation 1 keeps answering. A client polling the serving worker the whole time sees only
whole answers: generation 1's (brute force with the bug) until the cutover, then generation
2's (brute force without it), never an error, an empty answer or a mix. After the cutover new
events are counted by generation 2, and every answer of the old worker (forwarded for the
replayed pipeline, its own for the other) equals brute force over everything sent. A replay
whose worker dies leaves generation 1 serving, unchanged, and so does one stopped with Ctrl-C;
the next attempt takes a fresh generation.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tally.broker.local import LocalBroker
from tally.codecs.avro import AvroCodec
from tally.core.clock import iso
from tests.conftest import WorkerFactory
from tests.harness import Worker, wait_until
from tests.load import (
    MINUTE_MS,
    SERVERS,
    Load,
    agree,
    brute_points,
    expected_top,
    minute_rollups,
    points,
    same,
)

#: Each pipeline's deliberate bug, as a sitecustomize module generation 1 runs with.
BUGS = {
    "sales": """
import tally.core.sliding as sliding

counted = sliding.SlidingTotals.ingest


def ingest(self, arrivals, *args, **kwargs):
    return counted(self, [(item, 1, at) for item, _, at in arrivals], *args, **kwargs)


sliding.SlidingTotals.ingest = ingest
""",
    "metrics": """
import tally.core.rollups as rollups

folded = rollups.fold_samples


def fold_samples(samples, into, closed_before, max_ts_ms, admits=None):
    doubled = [{**s, "value": s["value"] * 2} for s in samples]
    return folded(doubled, into, closed_before, max_ts_ms, admits)


rollups.fold_samples = fold_samples
""",
}

TWO_DAYS_MS = 2 * 86_400_000


def with_bug(pipeline: str, load: Load) -> Load:
    """What generation 1 counts of `load`: the same events through the bug."""
    bugged = copy.copy(load)
    if pipeline == "sales":
        bugged.purchases = [{**p, "quantity": 1} for p in load.purchases]
    else:
        bugged.samples = [{**s, "value": s["value"] * 2} for s in load.samples]
    return bugged


def probe_path(pipeline: str, since_ms: int) -> str:
    """The query the client polls: the top-10, or one server's minutes."""
    if pipeline == "sales":
        return "/api/sales/top"
    window = f"from={since_ms - 2 * MINUTE_MS}&to={since_ms + 10 * MINUTE_MS}"
    return f"/api/servers/{SERVERS[0]}/metrics?{window}"


def answers_for(pipeline: str, load: Load) -> Callable[[dict[str, Any]], bool]:
    """Whether a polled answer is exactly brute force over `load`."""
    if pipeline == "sales":
        want = expected_top(load)
        return lambda body: [[i["item_id"], i["quantity"]] for i in body["items"]] == want
    minutes = minute_rollups(load, SERVERS[0])
    return lambda body: all(
        same(points(body["metrics"].get(metric, [])), brute_points(by_minute))
        for metric, by_minute in minutes.items()
    )


@dataclass
class Seen:
    at: float
    status: int
    generation: str | None
    body: dict[str, Any] | None


class Poller:
    """GETs one query on one worker every 50 ms from a thread, remembering each answer."""

    def __init__(self, worker: Worker, path: str) -> None:
        self.request = worker.request(path)
        self.seen: list[Seen] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.request, timeout=10) as response:
                    generation = response.headers.get("Tally-Generation")
                    body = json.loads(response.read())
                    self.seen.append(Seen(time.monotonic(), 200, generation, body))
            except urllib.error.HTTPError as exc:
                self.seen.append(Seen(time.monotonic(), exc.code, None, None))
            except OSError:  # refused, reset or timed out: recorded as status 0
                self.seen.append(Seen(time.monotonic(), 0, None, None))
            time.sleep(0.05)


def bugged_worker(make_worker: WorkerFactory, tmp_path: Path, pipeline: str) -> Worker:
    patch = tmp_path / "bug"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(BUGS[pipeline])
    return make_worker("w1", PYTHONPATH=str(patch)).start()


def history(broker: LocalBroker, codecs: tuple[AvroCodec, AvroCodec], seconds: float) -> Load:
    load = Load(broker.bootstrap, *codecs).start()
    time.sleep(seconds)
    load.stop()
    return load


def replay_process(make_worker: WorkerFactory, name: str, pipeline: str, *args: str) -> Worker:
    """`tally replay`; its Worker handle's port is the new generation's web port."""
    replay = make_worker(name)
    replay.command = ("replay", "--pipeline", pipeline, *args, "--web-port", str(replay.port))
    return replay


@pytest.mark.parametrize("pipeline", ["sales", "metrics"])
def test_replay_fixes_a_logic_bug_and_cuts_over_without_a_gap(
    broker: LocalBroker,
    make_worker: WorkerFactory,
    tmp_path: Path,
    purchase_codec: AvroCodec,
    metric_batch_codec: AvroCodec,
    pipeline: str,
) -> None:
    served = bugged_worker(make_worker, tmp_path, pipeline)
    since_ms = int(time.time() * 1000)
    load = history(broker, (purchase_codec, metric_batch_codec), seconds=4)
    path = probe_path(pipeline, since_ms)
    is_buggy, is_correct = (
        answers_for(pipeline, with_bug(pipeline, load)),
        answers_for(pipeline, load),
    )
    wait_until(lambda: is_buggy(served.get(path)), 60, what="generation 1's (buggy) answer")
    assert not is_correct(served.get(path)), "the bug must change the answer"

    replay = replay_process(make_worker, "replay", pipeline, "--from", iso(since_ms - TWO_DAYS_MS))
    with Poller(served, path) as poller:
        replay.start(ready_timeout=120)
        wait_until(lambda: "replay: cut over" in replay.log(), 120, what="the cutover")
        cut_over = time.monotonic()
        wait_until(lambda: poller.seen[-1].generation == "2", 10, what="a forwarded answer")
        time.sleep(2)
    assert re.search(r"of [\d,]+ messages \(100 %\)", replay.log()), replay.log()

    # Every answer while the replay ran and at the cutover: 200, and whole.
    failed = [s for s in poller.seen if s.status != 200]
    assert poller.seen and not failed, failed[:3]
    check = {"1": is_buggy, "2": is_correct}
    wrong = [s for s in poller.seen if not check[s.generation or ""](s.body or {})]
    assert not wrong, wrong[:3]
    generations = [s.generation for s in poller.seen]
    first_new = generations.index("2")
    assert "1" in generations[:first_new] and set(generations[first_new:]) == {"2"}
    assert poller.seen[first_new].at - cut_over < 5

    # Generation 2 now serves live data: new events count; every answer of the old worker
    # (forwarded for this pipeline, its own for the other) equals brute force over all.
    more = history(broker, (purchase_codec, metric_batch_codec), seconds=3)
    load.purchases += more.purchases
    load.samples += more.samples
    agree(served, load, since_ms, timeout=60)
    state = served.get("/api/health")
    assert state["serving"][pipeline]["generation"] == 2
    assert [a["state"] for a in state["attempts"]] == ["serving"]


def test_a_failed_replay_leaves_the_live_tables_serving(
    broker: LocalBroker,
    make_worker: WorkerFactory,
    tmp_path: Path,
    purchase_codec: AvroCodec,
    metric_batch_codec: AvroCodec,
) -> None:
    served = bugged_worker(make_worker, tmp_path, "sales")
    since_ms = int(time.time() * 1000)
    load = history(broker, (purchase_codec, metric_batch_codec), seconds=2)
    is_buggy = answers_for("sales", with_bug("sales", load))
    wait_until(lambda: is_buggy(served.get("/api/sales/top")), 60, what="generation 1's top")
    since = iso(since_ms - TWO_DAYS_MS)
    doomed = replay_process(make_worker, "doomed", "sales", "--from", since, "--max-lag", "-1")
    doomed.start(ready_timeout=120)  # its worker is up; it never cuts over (lag is never < 0)
    pid = int(re.search(r"\(pid (\d+),", doomed.log()).group(1))  # type: ignore[union-attr]
    os.kill(pid, signal.SIGKILL)
    assert doomed.process is not None
    assert doomed.process.wait(30) != 0
    assert "abandoned" in doomed.log() and "generation 1 still serves sales" in doomed.log()
    status, answer = served.get_status("/api/sales/top")
    assert status == 200 and is_buggy(answer)
    state = wait_until(
        lambda: (h := served.get("/api/health"))["attempts"][-1]["state"] == "failed" and h,
        10,
        what="the failed attempt recorded",
    )
    assert state["serving"] == {} and [a["state"] for a in state["attempts"]] == ["failed"]

    # A replay stopped with Ctrl-C before its cutover: the same.
    stopped = replay_process(make_worker, "stopped", "sales", "--from", since, "--max-lag", "-1")
    stopped.start(ready_timeout=120)
    stopped.stop(signal.SIGINT)
    assert "abandoned (stopped)" in stopped.log(), stopped.tail()
    wait_until(
        lambda: served.get("/api/health")["attempts"][-1]["state"] == "failed",
        10,
        what="the stopped attempt recorded",
    )
    state = served.get("/api/health")
    assert state["serving"] == {} and state["attempts"][-1]["reason"] == "stopped"
    assert is_buggy(served.get("/api/sales/top"))

    # The next attempt gets generation 4: nothing of the failed ones is reused.
    again = replay_process(make_worker, "again", "sales", "--from", since)
    again.start(ready_timeout=120)
    wait_until(lambda: "replay: cut over" in again.log(), 120, what="the cutover")
    wait_until(
        lambda: served.get("/api/health")["serving"].get("sales", {}).get("generation") == 4,
        10,
        what="generation 4 serving",
    )
    agree(served, load, since_ms)
