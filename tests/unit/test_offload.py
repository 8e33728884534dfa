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
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from faust.types import EventT

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


def exit_if_offloaded(count: int) -> list[None]:
    """Ends the process making the call, if it is not the test's own."""
    if multiprocessing.parent_process() is not None:
        os._exit(1)
    return [None] * count


def test_a_call_runs_in_another_process_and_none_runs_without_one() -> None:
    offload = Offload(1)
    try:
        future = offload.submit(os.getpid)
        assert future is not None and future.result(30) != os.getpid()
    finally:
        offload.close()
    assert Offload(0).submit(os.getpid) is None


def test_the_loop_makes_the_calls_the_process_has_not_started_instead_of_waiting() -> None:
    async def main() -> None:
        offload = Offload(1)
        ahead: Ahead[int] = Ahead(offload)
        sent = events(12)
        try:
            # The process sleeps on the first call; the second waits queued for it; the loop,
            # waiting for the first, makes the others, from the last.
            ahead.start(
                made_by,
                [(sent[:2], (2, 2.0)), *((sent[n : n + 2], (2,)) for n in range(2, 12, 2))],
            )
            time.sleep(0.5)  # the pool's thread queues the first two calls meanwhile
            made = [await ahead.take(event) for event in sent]
        finally:
            offload.close()
        here = os.getpid()
        assert made[0] == made[1] != here  # the process
        assert made[4:] == [here] * 8, made  # the loop, while it waited
        assert made[2] == made[3] and made[2] in (here, made[0])  # queued: either

    asyncio.run(main())


def test_each_event_gets_its_result_and_none_where_the_call_failed() -> None:
    async def main() -> None:
        offload = Offload(1)
        ahead: Ahead[Any] = Ahead(offload)
        sent = events(6)
        try:
            # sorted() gives one result per event; ["b", 1] does not sort (TypeError).
            ahead.start(sorted, [(sent[:3], ([3, 1, 2],)), (sent[3:5], (["b", 1],))])
            assert [await ahead.take(event) for event in sent[:3]] == [1, 2, 3]
            assert await ahead.take(sent[3]) is None and await ahead.take(sent[4]) is None
            assert await ahead.take(sent[5]) is None  # not handed over
            assert await ahead.take(sent[0]) is None  # taken already
            ahead.start(sorted, [(sent[5:], ([7],))])  # the next batch: the process lives on
            assert await ahead.take(sent[5]) == 7
        finally:
            offload.close()

    asyncio.run(main())


def test_a_dead_process_costs_its_calls_and_the_next_batch_gets_another() -> None:
    async def main() -> None:
        offload = Offload(1)
        ahead: Ahead[Any] = Ahead(offload)
        sent = events(3)
        try:
            ahead.start(exit_if_offloaded, [(sent[:2], (2,))])  # the process exits mid-call
            assert await ahead.take(sent[0]) is None and await ahead.take(sent[1]) is None
            ahead.start(sorted, [(sent[2:], ([5],))])
            assert await ahead.take(sent[2]) == 5
        finally:
            offload.close()

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
