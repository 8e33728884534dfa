"""The offload process (runtime.offload), with real spawned processes: each event gets its
call's result; a call that fails or a process that dies costs speed, never an event; the
process ends with its worker, even a SIGKILLed one."""

from __future__ import annotations

import asyncio
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


def test_a_call_runs_in_another_process_and_none_runs_without_one() -> None:
    async def main() -> None:
        offload = Offload(1)
        try:
            future = offload.call(os.getpid)
            assert future is not None and await future not in (None, os.getpid())
        finally:
            offload.close()
        assert Offload(0).call(os.getpid) is None

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
            ahead.start(os._exit, [(sent[:2], (1,))])  # the process exits mid-call
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
    print(await offload.call(os.getpid), flush=True)
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
