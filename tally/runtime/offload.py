"""A second process for the CPU-bound part of a batch: a worker's event loop runs on one core,
so decoding a batch's messages there leaves a second core idle while the loop has no time.

`Offload` calls functions in `TALLY_OFFLOAD_PROCESSES` spawned processes (0: none), started
at the first call. `Ahead` hands a batch's messages to them as soon as the batch is taken, so
the process works on a partition's share while the loop processes the share before it, and
the loop makes the calls the process has not started yet rather than wait for them. A call
that cannot be made or fails gives None, and the caller does the work itself: the process
being off, dead, stuck or wrong costs speed, never an event.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, Generic, TypeVar

from faust.types import EventT

from tally.app import app, settings
from tally.runtime.offload_process import follow_parent
from tally.telemetry import OFFLOADED

logger = logging.getLogger(__name__)

R = TypeVar("R")
#: After a process died or was stopped, how long the loop does all the work before another
#: is started: a process that keeps dying costs a start every this often, not every batch.
RESTART_PAUSE_S = 10.0
#: A call running longer than this is taken as stuck (its process stopped, frozen): the
#: process is killed and the loop makes the call. Calls take milliseconds.
CALL_TIMEOUT_S = 30.0


class Offload:
    """Calls in a pool of spawned processes (spawned: the worker has threads a fork would
    copy mid-step)."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._paused_until = 0.0
        self._closed = False
        #: Counts the pools started: a call's tells whether its pool is still the one.
        self.generation = 0

    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R] | None:
        """`fn(*args)` in a process; None when there is none to call."""
        if not self.processes or self._closed or time.monotonic() < self._paused_until:
            return None
        if self._pool is None:
            self.generation += 1
            self._pool = ProcessPoolExecutor(
                self.processes,
                mp_context=get_context("spawn"),
                initializer=follow_parent,
                initargs=(os.getpid(),),
            )
        try:
            return self._pool.submit(fn, *args)
        except BrokenProcessPool:
            self.stop("an offload process died", self.generation)
            return None

    def stop(self, why: str, generation: int) -> None:
        """Ends pool `generation` if it is still the current one (killing its processes): its
        calls fail, and the loop does the work until a call starts another after
        `RESTART_PAUSE_S`."""
        pool = self._pool
        if pool is None or generation != self.generation:
            return
        self._pool = None
        logger.warning(
            "%s; the worker decodes its batches itself for %.0f s, then starts another",
            why,
            RESTART_PAUSE_S,
        )
        self._paused_until = time.monotonic() + RESTART_PAUSE_S
        # concurrent.futures has no public way to kill a pool's processes (3.14 adds one).
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """When the worker stops: waits for a call under way, and starts no other."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(cancel_futures=True)


#: A message's position: (topic, partition, offset).
Position = tuple[str, int, int]


@dataclass
class Call(Generic[R]):
    """One call of a batch: in a process (`future`), or made on the loop (`here`)."""

    fn: Callable[..., list[R | None]]
    args: tuple[Any, ...]
    size: int
    future: Future[list[R | None]]
    #: The pool generation (Offload.generation) the call went to.
    generation: int
    here: list[R | None] | None = None


class Ahead(Generic[R]):
    """What the offload processes made of each message of the current batch, by message.

    The loop shares the work: when it needs a result not ready yet, it makes the batch's last
    call the processes have not started itself, and so on until its own is ready, rather
    than wait; the processes go through the calls from the first. A batch's results not taken
    (its messages held back, or processed again one at a time) are dropped when the next
    batch starts."""

    def __init__(self, offload: Offload) -> None:
        self.offload = offload
        self._calls: list[Call[R]] = []
        self._pending: dict[Position, tuple[Call[R], int]] = {}

    def start(
        self,
        fn: Callable[..., list[R | None]],
        calls: Iterable[tuple[Sequence[EventT], tuple[Any, ...]]],
    ) -> None:
        """Calls `fn(*args)` for each (events, args) of `calls`, each giving one result per
        event, in order."""
        for call in self._calls:
            call.future.cancel()  # not started: no one will take it
        self._calls.clear()
        self._pending.clear()
        for events, args in calls:
            future = self.offload.submit(fn, *args)
            if future is None:
                return
            call = Call(fn, args, len(events), future, self.offload.generation)
            self._calls.append(call)
            for index, event in enumerate(events):
                self._pending[position(event)] = (call, index)

    async def take(self, event: EventT) -> R | None:
        """The event's result (None: none, the caller does the work)."""
        found = self._pending.pop(position(event), None)
        if found is None:
            return None
        call, index = found
        result = await self._result(call)
        topic = event.message.topic
        made = "none" if result is None else "loop" if call.here is not None else "process"
        OFFLOADED.labels(topic, made).inc()
        return None if result is None else result[index]

    async def _result(self, call: Call[R]) -> list[R | None] | None:
        while call.here is None and not call.future.done():
            if self._make_one_here():
                await asyncio.sleep(0)  # what else waits on the loop goes between two calls
                continue
            waiter = asyncio.wrap_future(call.future)
            waiter.add_done_callback(seen)
            # asyncio.wait: a cancelled call (the pool closed) must not cancel this task
            if not (await asyncio.wait([waiter], timeout=CALL_TIMEOUT_S))[0]:
                why = f"an offload call ran for over {CALL_TIMEOUT_S:.0f} s"
                self.offload.stop(why, call.generation)
                self._make_here(call)
        if call.here is not None:
            return call.here
        if call.future.cancelled():
            return None
        error = call.future.exception()
        if isinstance(error, BrokenProcessPool):
            self.offload.stop("an offload process died", call.generation)
            return None
        if error is not None:
            self._failed(call, error)
            return None
        return call.future.result()

    def _make_one_here(self) -> bool:
        """Makes the last call the processes have not started on the loop; False if they
        have started every call left (they take them in order)."""
        for call in reversed(self._calls):
            if call.here is not None:
                continue
            if not call.future.cancel():
                return False
            self._make_here(call)
            return True
        return False

    def _make_here(self, call: Call[R]) -> None:
        try:
            call.here = call.fn(*call.args)
        except Exception as exc:
            self._failed(call, exc)
            call.here = [None] * call.size

    def _failed(self, call: Call[R], error: BaseException) -> None:
        """Logged once: the call's other events go without a result."""
        logger.error("an offload call failed; the worker does its work", exc_info=error)
        for key in [key for key, (other, _) in self._pending.items() if other is call]:
            del self._pending[key]


def seen(future: asyncio.Future[Any]) -> None:
    """Marks a waiter's error as retrieved: the call's own future is what is read."""
    if not future.cancelled():
        future.exception()


def position(event: EventT) -> Position:
    message = event.message
    return (message.topic, message.partition, message.offset)


offload = Offload(settings.offload_processes)


async def close_offload(sender: object, **kwargs: Any) -> None:
    """The worker stops: its offload processes go (off the loop: a call may be under way)."""
    await asyncio.to_thread(offload.close)


app.on_before_shutdown.connect(close_offload)  # type: ignore[arg-type]  # mode: sync-typed
