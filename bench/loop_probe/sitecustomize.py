"""Times every event-loop step and garbage collection of a Tally worker, to find what holds
queries waiting: put this folder on PYTHONPATH and name a file prefix in LOOP_PROBE, e.g.

    LOOP_PROBE=/tmp/steps PYTHONPATH=bench/loop_probe .venv/bin/python -m bench.recommendations

Each worker process (`... -m tally worker`) appends to `<prefix>.<pid>` one line per step
over 8 ms (LOOP_PROBE_STEP_MS): wall time, milliseconds, thread, the callback and, for a task,
where it was suspended when the step ended; and one per collection over 3 ms
(LOOP_PROBE_GC_MS; every full one). `python -m bench.loop_steps` sums the steps of a stretch of
wall time by task. The timing itself costs a few percent of throughput: figures from a probed
run are marked as such. A probed worker runs on asyncio's event loop (FAUST_LOOP=aio): the
steps are timed at asyncio's Handle._run, which uvloop, Tally's default, never calls.
(Being a `sitecustomize`, it hides any other on the path while it is there.)
"""

from __future__ import annotations

import asyncio.events
import gc
import os
import sys
import threading
import time
from typing import Any

SLOW_STEP_S = float(os.environ.get("LOOP_PROBE_STEP_MS", "8")) / 1000
SLOW_COLLECTION_S = float(os.environ.get("LOOP_PROBE_GC_MS", "3")) / 1000


def suspended_at(task: Any) -> str:
    """The innermost frames of a task's await chain: where its step ended."""
    names: list[str] = []
    awaited = task.get_coro()
    while awaited is not None and len(names) < 25:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            names.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return ">".join(names[-6:])


def install(prefix: str) -> None:
    out = open(f"{prefix}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115 (the process's)
    run_step = asyncio.events.Handle._run

    def timed_step(handle: asyncio.events.Handle) -> None:
        started = time.perf_counter()
        run_step(handle)
        took = time.perf_counter() - started
        if took > SLOW_STEP_S:
            owner = getattr(handle._callback, "__self__", handle._callback)  # type: ignore[attr-defined]
            where = suspended_at(owner) if hasattr(owner, "get_coro") else ""
            thread = threading.current_thread().name
            out.write(f"{time.time():.3f} {took * 1000:.1f} {thread} {owner!r:.120} @ {where}\n")

    collecting: list[float] = []

    def timed_collection(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collecting[:] = [time.perf_counter()]
        elif collecting:
            took = time.perf_counter() - collecting[0]
            if took > SLOW_COLLECTION_S or info["generation"] == 2:
                out.write(
                    f"{time.time():.3f} {took * 1000:.1f} GC gen{info['generation']} "
                    f"collected={info['collected']}\n"
                )

    asyncio.events.Handle._run = timed_step  # type: ignore[method-assign,assignment]
    gc.callbacks.append(timed_collection)


if os.environ.get("LOOP_PROBE") and "worker" in sys.argv:
    os.environ["FAUST_LOOP"] = "aio"
    install(os.environ["LOOP_PROBE"])
