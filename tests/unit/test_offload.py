"""The offload process (runtime.offload), with real spawned processes: each event gets its
call's result; a call that fails or a process that dies costs speed, never an event; the
process ends with its worker, even a SIGKILLed one."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from faust.types import EventT

import tally.runtime.offload as offload_module
from tally.runtime.offload import Ahead, Offload


def events(count: int) -> list[EventT]:
    return [
        cast(EventT, SimpleNamespace(message=SimpleNamespace(topic="t", partition=0, offset=n)))
        for n in range(count)
    ]


def made_by(count: int, sleep_s: float = 0.0) -> list[int]:
    """A result per event: the process that made the call."""
    time.sleep(sleep_s)
    return [os.getpid()] * count


def stuck_if_offloaded(count: int) -> list[int]:
    """Never returns in an offload process; made on the loop, gives the test's pid."""
    if multiprocessing.parent_process() is not None:
        time.sleep(3600)
    return [os.getpid()] * count


def exit_if_offloaded(count: int) -> list[None]:
    """Ends the process making the call, if it is not the test's own."""
    if multiprocessing.parent_process() is not None:
        os._exit(1)
    return [None] * count


def test_a_call_runs_in_another_process_that_builds_no_worker() -> None:
    offload = Offload(1)
    try:
        future = offload.submit(os.getpid)
        assert future is not None and future.result(30) != os.getpid()
        app_loaded = offload.submit(eval, "'tally.app' in __import__('sys').modules")
        assert app_loaded is not None and app_loaded.result(30) is False
    finally:
        offload.close()
    assert offload.submit(os.getpid) is None  # closed: the worker stops
    assert Offload(0).submit(os.getpid) is None


@pytest.fixture
def ahead() -> Iterator[Ahead[Any]]:
    """Results ahead from one offload process, closed after the test."""
    offload = Offload(1)
    yield Ahead(offload)
    offload.close()


def test_the_loop_makes_the_calls_the_process_has_not_started_instead_of_waiting(
    ahead: Ahead[Any],
) -> None:
    async def main() -> None:
        sent = events(12)
        # The process sleeps on the first call; the second waits queued for it; the loop,
        # waiting for the first, makes the others, from the last.
        ahead.start(
            made_by,
            [(sent[:2], (2, 2.0)), *((sent[n : n + 2], (2,)) for n in range(2, 12, 2))],
        )
        time.sleep(0.5)  # the pool's thread queues the first two calls meanwhile
        made = [await ahead.take(event) for event in sent]
        here = os.getpid()
        assert made[0] == made[1] != here  # the process
        assert made[4:] == [here] * 8, made  # the loop, while it waited
        assert made[2] == made[3] and made[2] in (here, made[0])  # queued: either

    asyncio.run(main())


def test_each_event_gets_its_result_and_none_where_the_call_failed(ahead: Ahead[Any]) -> None:
    async def main() -> None:
        sent = events(6)
        # sorted() gives one result per event; ["b", 1] does not sort (TypeError).
        ahead.start(sorted, [(sent[:3], ([3, 1, 2],)), (sent[3:5], (["b", 1],))])
        assert [await ahead.take(event) for event in sent[:3]] == [1, 2, 3]
        assert await ahead.take(sent[3]) is None and await ahead.take(sent[4]) is None
        assert await ahead.take(sent[5]) is None  # not handed over
        assert await ahead.take(sent[0]) is None  # taken already
        ahead.start(sorted, [(sent[5:], ([7],))])  # the next batch: the process lives on
        assert await ahead.take(sent[5]) == 7

    asyncio.run(main())


def test_a_dead_process_costs_its_calls_and_a_later_batch_gets_another(
    monkeypatch: pytest.MonkeyPatch, ahead: Ahead[Any]
) -> None:
    monkeypatch.setattr(offload_module, "RESTART_PAUSE_S", 1.0)

    async def main() -> None:
        sent = events(4)
        ahead.start(exit_if_offloaded, [(sent[:2], (2,))])  # the process exits mid-call
        assert await ahead.take(sent[0]) is None and await ahead.take(sent[1]) is None
        ahead.start(made_by, [(sent[2:3], (1,))])  # paused: the loop does the work
        assert await ahead.take(sent[2]) is None
        await asyncio.sleep(1.0)
        ahead.start(made_by, [(sent[3:], (1,))])
        time.sleep(0.5)  # queued in the new pool: not made on the loop
        assert await ahead.take(sent[3]) not in (None, os.getpid())

    asyncio.run(main())


def test_a_stuck_call_is_made_on_the_loop_and_its_process_killed(
    monkeypatch: pytest.MonkeyPatch, ahead: Ahead[Any]
) -> None:
    monkeypatch.setattr(offload_module, "CALL_TIMEOUT_S", 1.0)

    async def main() -> None:
        sent = events(1)
        first = ahead.offload.submit(os.getpid)
        assert first is not None
        stuck = first.result(30)
        ahead.start(stuck_if_offloaded, [(sent, (1,))])
        time.sleep(0.5)  # queued: not made on the loop
        started = time.monotonic()
        assert await ahead.take(sent[0]) == os.getpid()
        assert time.monotonic() - started < 10
        deadline = time.monotonic() + 10
        while alive(stuck) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not alive(stuck)

    asyncio.run(main())


SCRIPT = """
import asyncio, os
from tally.runtime.offload import Offload

async def main():
    offload = Offload(1)
    print(await asyncio.wrap_future(offload.submit(os.getpid)), flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def test_the_process_ends_when_its_worker_is_killed(tmp_path: Path) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TALLY_DATA_DIR": str(tmp_path)},
    )
    try:
        assert worker.stdout is not None
        child = int(worker.stdout.readline())
        assert alive(child)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the offload process outlived its SIGKILLed worker"
    finally:
        worker.kill()


def alive(pid: int) -> bool:
    """Running (a zombie no one reaped yet has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
