"""A second process for the CPU-bound part of a batch: a worker's event loop runs on one core,
so decoding a batch's messages there leaves a second core idle while the loop has no time.

`Offload` calls functions in `TALLY_OFFLOAD_PROCESSES` spawned processes (0: none), started
at the first call. `Ahead` hands a batch's messages to them as soon as the batch is taken, so
the process works on a partition's share while the loop processes the share before it, and
the loop makes the calls the process has not started yet rather than wait for them. A call
that cannot be made or fails gives None, and the caller does the work itself: the process
being off, dead (another is started) or wrong costs speed, never an event.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, Generic, TypeVar

from faust.types import EventT

from tally.app import app, settings

logger = logging.getLogger(__name__)

R = TypeVar("R")
#: prctl(2): the signal a process gets when the thread that started it ends.
PR_SET_PDEATHSIG = 1


def follow_parent(parent: int) -> None:
    """Set up an offload process: it ends with its worker, however the worker ends (SIGKILL
    included, on Linux), and leaves Ctrl-C to the worker, which stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the worker ended before the line above
        os._exit(0)


class Offload:
    """Calls in a pool of spawned processes (spawned: the worker has threads a fork would
    copy mid-step)."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, fn: Callable[..., R], *args: Any) -> Future[R] | None:
        """`fn(*args)` in a process; None when there is none to call."""
        if not self.processes:
            return None
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.processes,
                mp_context=get_context("spawn"),
                initializer=follow_parent,
                initargs=(os.getpid(),),
            )
        try:
            return self._pool.submit(fn, *args)
        except (BrokenProcessPool, RuntimeError):  # it died, or was shut down
            self.broken()
            return None

    def broken(self) -> None:
        """A process died: its calls fail, and the next call starts a new pool."""
        if self._pool is not None:
            logger.warning(
                "an offload process died; the worker decodes its batches itself until the "
                "next batch starts another"
            )
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)  # waits for a call under way
            self._pool = None


#: A message's place: (topic, partition, offset).
Place = tuple[str, int, int]


@dataclass
class Call(Generic[R]):
    """One call of a batch: in a process (`future`), or made on the loop (`here`)."""

    fn: Callable[..., list[R | None]]
    args: tuple[Any, ...]
    size: int
    future: Future[list[R | None]]
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
        self._pending: dict[Place, tuple[Call[R], int]] = {}

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
            call = Call(fn, args, len(events), future)
            self._calls.append(call)
            for index, event in enumerate(events):
                self._pending[place(event)] = (call, index)

    async def take(self, event: EventT) -> R | None:
        """The event's result (None: none, the caller does the work)."""
        found = self._pending.pop(place(event), None)
        if found is None:
            return None
        call, index = found
        while call.here is None and not call.future.done():
            if self._make_one_here():
                await asyncio.sleep(0)  # what else waits on the loop goes between two calls
                continue
            waiter = asyncio.wrap_future(call.future)
            await asyncio.wait([waiter])  # a cancelled call (the pool closed) must not cancel us
            if not waiter.cancelled():
                waiter.exception()  # seen: it is taken from the call's own future below
        if call.here is not None:
            return call.here[index]
        if call.future.cancelled():
            return None
        error = call.future.exception()
        if isinstance(error, BrokenProcessPool):
            self.offload.broken()
            return None
        if error is not None:
            self._failed(call, error)
            return None
        return call.future.result()[index]

    def _make_one_here(self) -> bool:
        """Makes the last call the processes have not started on the loop; False if they
        have started every call left (they take them in order)."""
        for call in reversed(self._calls):
            if call.here is not None:
                continue
            if not call.future.cancel():
                return False
            try:
                call.here = call.fn(*call.args)
            except Exception as exc:
                self._failed(call, exc)
                call.here = [None] * call.size
            return True
        return False

    def _failed(self, call: Call[R], error: BaseException) -> None:
        """Logged once: the call's other events go without a result."""
        logger.error("an offload call failed; the worker does its work", exc_info=error)
        for key in [key for key, (other, _) in self._pending.items() if other is call]:
            del self._pending[key]


def place(event: EventT) -> Place:
    message = event.message
    return (message.topic, message.partition, message.offset)


offload = Offload(settings.offload_processes)


async def close_offload(sender: object, **kwargs: Any) -> None:
    offload.close()


app.on_before_shutdown.connect(close_offload)  # type: ignore[arg-type]  # mode: sync-typed
