"""`tally replay`: rebuild a pipeline's tables from history as a new generation, then cut over.

While the new generation replays, the serving one keeps answering; nothing it reads is
touched (see tally.core.generations). The cutover is one record on the serving topic, written only
once the new generation has processed everything that was in the topic when the replay began
and answers queries; a replay that fails or is stopped before that changes nothing for
readers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from aiokafka import TopicPartition
from faust.cli import AppCommand, option

from tally.access.tokens import authorization
from tally.app import app, settings
from tally.broker.admin import (
    commit_offsets,
    committed_offsets,
    ensure_compacted_topic,
    offsets_at_time,
    read_topic,
    send_record,
)
from tally.broker.local import die_with_parent, free_port, stop_process
from tally.cli.errors import fail, parsed_by
from tally.cli.local import run_until_stopped
from tally.cli.tokens import READ_ONLY, own_token
from tally.core.clock import epoch_ms, iso, now_ms
from tally.core.errors import TallyError
from tally.core.generations import (
    FAILED,
    REPLAYING,
    SERVING,
    SUPERSEDED,
    Attempt,
    Generations,
    Serving,
    encode,
)
from tally.topics import SOURCE_TOPICS

#: The source topic each pipeline replays, and the query that shows it answers.
REPLAYED = {
    "sales": (SOURCE_TOPICS[0], "/api/sales/top"),
    "metrics": (SOURCE_TOPICS[1], None),
    "merchants": (SOURCE_TOPICS[0], None),
}
#: Seconds between progress lines.
PROGRESS_S = 2.0


class ReplayFailed(TallyError):
    """The new generation cannot be completed, or the replay was stopped; nothing was cut
    over."""


def why_stopped(exc: BaseException) -> str:
    if isinstance(exc, TallyError):  # ours (ReplayFailed, broker errors): the message says it
        return str(exc)
    if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
        return "stopped"
    return repr(exc)


def replay_start(text: str) -> int:
    return 0 if text == "earliest" else epoch_ms(text)


def history_needed_ms(pipeline: str) -> int:
    """How far back the answers served right after a cutover reach: the sales window (plus
    grace), or the metrics or merchants hot tier."""
    if pipeline == "sales":
        panes = settings.sales_window_panes * settings.sales_pane_seconds
        return int((panes + settings.grace_seconds) * 1000)
    if pipeline == "merchants":
        return settings.merchants_hot_ms
    return int(settings.metrics_hot_hours * 3_600_000)


async def load_generations() -> Generations:
    await ensure_compacted_topic(
        settings.bootstrap_servers, settings.serving_topic, settings.replication
    )
    records = [
        (r.key, r.value)
        async for r in read_topic(settings.bootstrap_servers, settings.serving_topic)
    ]
    return Generations().absorb_all(records)


async def record(entry: Attempt | Serving) -> None:
    await send_record(settings.bootstrap_servers, settings.serving_topic, entry.key, encode(entry))


def health(url: str) -> dict[str, Any] | None:
    """The worker's /api/health answer (ready or not), None while it does not answer."""
    try:
        with urllib.request.urlopen(url + "/api/health", timeout=5) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        try:
            return dict(json.loads(exc.read() or b"{}"))
        except ValueError:
            return None
    except (OSError, ValueError):
        return None


def answers(url: str, path: str | None, token: str) -> bool:
    """The pipeline's main query answers with something, not flagged stale (the top-K is
    stale while a partition has not reached the window, or the merge has not heard from it)."""
    if path is None:
        return True
    headers = authorization(token) if token else {}
    try:
        request = urllib.request.Request(url + path, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
    except (OSError, ValueError):
        return False
    return bool(body.get("items")) and not body.get("stale", True)


class Progress:
    """Messages of the replayed range processed, from the new group's committed offsets."""

    def __init__(self, starts: dict[TopicPartition, tuple[int, int]]) -> None:
        self.starts = starts
        self.total = sum(end - start for start, end in starts.values())
        self.began = time.monotonic()

    def done(self, committed: dict[TopicPartition, int | None]) -> int:
        return sum(
            min(max((committed.get(tp) or start) - start, 0), end - start)
            for tp, (start, end) in self.starts.items()
        )

    def line(self, done: int, waiting: int | None) -> str:
        elapsed = time.monotonic() - self.began
        rate = done / elapsed if elapsed > 0 else 0.0
        share = 100.0 if self.total == 0 else 100.0 * done / self.total
        eta = (
            f", ~{(self.total - done) / rate:.0f} s left" if rate > 0 and done < self.total else ""
        )
        live = "" if waiting is None else f"; {waiting:,} waiting now"
        return f"  {done:,} of {self.total:,} messages ({share:.0f} %), {rate:,.0f}/s{eta}{live}"


@app.command(
    option(
        "--pipeline",
        type=click.Choice(sorted(REPLAYED)),
        help="The pipeline whose tables are rebuilt.",
    ),
    option(
        "--from",
        "from_ms",
        callback=parsed_by(replay_start),
        help="Replay the source records stamped at or after this time: ISO 8601 "
        "(2026-11-20T00:00:00Z), epoch ms, or `earliest`.",
    ),
    option(
        "--web-port",
        type=int,
        default=0,
        help="Web port of the new generation's worker (default: a free port).",
    ),
    option(
        "--max-lag",
        type=int,
        default=1000,
        show_default=True,
        help="Cut over once the new generation has processed the history and at most this "
        "many new messages wait on its topics.",
    ),
    option(
        "--allow-partial",
        is_flag=True,
        help="Replay from a time later than the served answers reach back (the sales window, "
        "the metrics hot tier): those answers then miss the records before --from.",
    ),
    option("--status", is_flag=True, help="Print the generations and exit."),
)
async def replay(
    self: AppCommand,
    pipeline: str | None,
    from_ms: int | None,
    web_port: int,
    max_lag: int,
    allow_partial: bool,
    status: bool,
) -> None:
    """Rebuild a pipeline's tables from the topic's history as a new generation, while the
    current one serves; show progress; cut queries over once it has caught up. Then keep
    running the new generation's worker until Ctrl-C."""
    generations = await load_generations()
    if status:
        print(json.dumps(generations.describe(), indent=2))
        return
    if pipeline is None or from_ms is None:
        fail("give --pipeline and --from (or --status)", code=2)
    wall = now_ms()
    reach = wall - history_needed_ms(pipeline)
    if from_ms > reach and not allow_partial:
        fail(
            f"--from {iso(from_ms)} is later than the {pipeline} answers reach back "
            f"({iso(reach)}): they would miss the records before it. Replay from {iso(reach)} "
            "or earlier, or pass --allow-partial",
            code=2,
        )
    current = generations.serving_generation(pipeline)
    generation = generations.next_generation()
    topic, probe_path = REPLAYED[pipeline]
    group = replace(settings, generation=generation).faust_app_id
    starts = await offsets_at_time(settings.bootstrap_servers, topic, from_ms)
    progress = Progress(starts)
    print(
        f"replay: {pipeline} generation {generation} (generation {current} keeps serving), "
        f"{progress.total:,} messages of {topic} from {iso(from_ms)}",
        flush=True,
    )
    await commit_offsets(
        settings.bootstrap_servers, group, {tp: start for tp, (start, _) in starts.items()}
    )
    previous = generations.serving.get(pipeline)
    port = web_port or free_port()
    url = f"http://{settings.advertised_host}:{port}"
    worker: subprocess.Popen[bytes] | None = None
    #: None: nothing served changed yet; False: the cutover record may be written; True: done.
    cut_over: bool | None = None
    # Ctrl-C and SIGTERM are taken from Faust's command runner (as `run_until_stopped` does
    # after the cutover), so the clean-up below runs as plain code, not in a cancelled task.
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await record(Attempt(generation, pipeline, from_ms, REPLAYING, wall))
        worker, log_path = start_worker(generation, pipeline, port)
        print(f"replay: worker {url} (pid {worker.pid}, log {log_path})", flush=True)
        await catch_up(worker, url, group, topic, probe_path, progress, max_lag, stop)
        cut_over = False
        await record(Serving(pipeline, generation, (url,), now_ms()))
        cut_over = True
        await record(Attempt(generation, pipeline, from_ms, SERVING, now_ms()))
        if current in generations.attempts:
            await record(replace(generations.attempts[current], state=SUPERSEDED, at_ms=now_ms()))
        print(
            f"replay: cut over: generation {generation} now answers {pipeline} queries on "
            f"every worker (they forward to {url}).\n"
            f"  This process runs that worker: stopping it stops {pipeline} answers everywhere "
            f"until a generation-{generation} worker runs at {url} again:\n"
            f"  TALLY_GENERATION={generation} TALLY_PIPELINES={pipeline} "
            f"TALLY_WEB_PORT={port} tally worker",
            flush=True,
        )
        await run_until_stopped(worker)
    except BaseException as exc:
        if cut_over:
            raise
        if cut_over is False:  # the cutover record may have been written: put back the old one
            await record(previous or Serving(pipeline, current, (), now_ms()))
        reason = why_stopped(exc)
        await record(Attempt(generation, pipeline, from_ms, FAILED, now_ms(), reason))
        message = (
            f"generation {generation} abandoned ({reason}); generation {current} still serves "
            f"{pipeline}, unchanged"
        )
        if isinstance(exc, Exception):
            fail(message)
        print(f"replay: {message}", file=sys.stderr, flush=True)
        raise
    finally:
        stop_process(worker, settings.stop_timeout_seconds + 10)


def start_worker(generation: int, pipeline: str, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    """The new generation's worker, a child process logging beside its tables."""
    data_dir = (settings.data_dir / f"generation-{generation}").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "worker.log"
    with log_path.open("ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tally", "worker", "--loglevel", settings.log_level],
            env={
                **os.environ,
                "TALLY_GENERATION": str(generation),
                "TALLY_PIPELINES": pipeline,
                "TALLY_DATA_DIR": str(data_dir),
                "TALLY_WEB_PORT": str(port),
                # The same schemas and archive as the serving generation.
                "TALLY_SCHEMA_REGISTRY": settings.registry_url,
                "TALLY_ARCHIVE_DIR": settings.archive_location,
            },
            preexec_fn=die_with_parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return worker, log_path


async def catch_up(
    worker: subprocess.Popen[bytes],
    url: str,
    group: str,
    topic: str,
    probe_path: str | None,
    progress: Progress,
    max_lag: int,
    stop: asyncio.Event,
) -> None:
    """Wait until the new generation has processed every message that was in `topic` when the
    replay began, is ready, answers, and at most `max_lag` messages wait on its topics."""
    while True:
        if stop.is_set():
            raise ReplayFailed("stopped")
        if worker.poll() is not None:
            raise ReplayFailed(f"its worker exited with code {worker.returncode}; see its log")
        committed = await committed_offsets(settings.bootstrap_servers, group, topic)
        done = progress.done(committed)
        state = await asyncio.to_thread(health, url)
        ready = state is not None and state.get("status") == "ready"
        waiting = sum(state.get("lag", {}).values()) if ready and state else None
        print(progress.line(done, waiting), flush=True)
        if (
            done >= progress.total
            and waiting is not None
            and waiting <= max_lag
            and await asyncio.to_thread(answers, url, probe_path, own_token(READ_ONLY))
        ):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PROGRESS_S)
