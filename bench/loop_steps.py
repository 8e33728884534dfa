"""What held a worker's event loops over a stretch of wall time: the steps a loop probe
(`bench/loop_probe`) wrote, summed by thread and task (and, for Faust's service tasks, where
the step ended), largest share of the wall time first.

    .venv/bin/python -m bench.loop_steps <probe file> <from> <to> [--top 14]

`from` and `to` are wall times (epoch seconds), e.g. a load's as `bench.recommendations`
prints them; a step's time is when it ended. Only steps over the probe's threshold were
written (LOOP_PROBE_STEP_MS), so the shares are of what was slow, not of all the work.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path
from statistics import median

TASK = re.compile(r"coro=<([^ (]+)")
ENDED_AT = re.compile(r"@ (.*)")


def kind(thread: str, rest: str) -> str:
    """The step's thread and task; a service task's (Faust runs many as `_execute_task`) with
    where it ended, a collection by generation."""
    if thread == "GC":
        return f"GC {rest.split()[0]}"
    task = TASK.search(rest)
    name = f"{thread} {task.group(1) if task else rest[:50].strip()}"
    if "Service._execute" in name and (ended := ENDED_AT.search(rest)):
        name += f" @ {ended.group(1)[-90:]}"  # the innermost frames: where it waited
    return name


def summarise(path: Path, began: float, ended: float) -> dict[str, list[float]]:
    """Each kind of step's durations (ms) between the two wall times."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    for line in path.read_text().splitlines():
        parts = line.split(" ", 3)
        try:
            at, took_ms, thread, rest = float(parts[0]), float(parts[1]), parts[2], parts[3]
        except (ValueError, IndexError):  # a line cut short (the worker was killed)
            continue
        if began <= at <= ended:
            by_kind[kind(thread, rest)].append(took_ms)
    return by_kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probe", type=Path, help="a loop probe's file (<prefix>.<pid>)")
    parser.add_argument("began", metavar="from", type=float, help="epoch seconds")
    parser.add_argument("ended", metavar="to", type=float, help="epoch seconds")
    parser.add_argument("--top", type=int, default=14)
    args = parser.parse_args()
    if args.ended <= args.began:
        raise SystemExit("`to` must be after `from`")
    wall_ms = (args.ended - args.began) * 1000
    by_kind = summarise(args.probe, args.began, args.ended)
    print("| steps | share of the wall time | median ms | max ms | thread and task |")
    print("|---:|---:|---:|---:|---|")
    ranked = sorted(by_kind.items(), key=lambda item: -sum(item[1]))
    for name, took in ranked[: args.top]:
        print(
            f"| {len(took):,} | {sum(took) / wall_ms:.1%} | {median(took):.1f} | "
            f"{max(took):.1f} | {name} |"
        )


if __name__ == "__main__":
    main()
