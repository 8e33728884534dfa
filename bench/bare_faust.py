"""Faust's own per-message ceiling, and what Tally's fetch-loop patch does to it: a Faust agent
that only counts the messages it is handed drains a backlog, on Faust's unpatched path and with
`faust_compat.deliver_messages_inline` installed, alternating on one broker per run.

    .venv/bin/python -m bench.bare_faust [--count 100000] [--runs 3]

The worker is `python -m bench.bare_faust worker` with the BENCH_* variables of
`bench.common.run_baseline` (BENCH_INLINE=1 installs the patch); it times itself from its
first message to the last.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from bench.baseline import TOPIC, Timing, report_answer
from bench.common import Message, Result, produce, report, run_baseline, run_in_scratch
from bench.faust_base import baseline_app
from tally.broker.local import LocalBroker, free_port
from tally.runtime.faust_compat import deliver_messages_inline

PLAIN = "faust agent, Faust's fetch loop"
INLINE = "tally patch: deliver_messages_inline"

app = baseline_app()
if os.environ.get("BENCH_INLINE") == "1":
    deliver_messages_inline()
messages = app.topic(TOPIC or "bare-in", value_type=bytes)
timing = Timing()


@app.agent(messages)
async def drain(stream):  # type: ignore[no-untyped-def]
    async for _ in stream:
        if timing.done():
            continue
        timing.count()
        if timing.done():
            report_answer(None)


def run(args: argparse.Namespace, workdir: Path) -> None:
    results: dict[str, list[Result]] = {PLAIN: [], INLINE: []}
    backlog: list[Message] = [(None, str(n).encode(), b"x" * 100, 0) for n in range(args.count)]
    for number in range(1, args.runs + 1):
        log = workdir / f"broker{number}.log"
        with LocalBroker("127.0.0.1", free_port(), log_path=log) as broker:
            topic = f"bare-{number}"
            asyncio.run(produce(broker.bootstrap, topic, backlog))
            order = [(PLAIN, "0"), (INLINE, "1")]
            for label, inline in order if number % 2 else order[::-1]:
                argv = ["bench.bare_faust", "worker", "-l", "warn"]
                result, _ = run_baseline(
                    argv,
                    label,
                    broker,
                    workdir,
                    args.count,
                    BENCH_TOPIC=topic,
                    BENCH_INLINE=inline,
                )
                results[label].append(result)
                print(f"  run {number}: {label}: {result.rate:,.0f}/s", flush=True)
    report("bare Faust agent, 100-byte messages", results, "messages", [PLAIN])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="messages in the backlog")
    parser.add_argument("--runs", type=int, default=3, help="runs of each; medians quoted")
    run_in_scratch(parser, "tally-bare-faust-", run)


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        app.main()
    else:
        main()
