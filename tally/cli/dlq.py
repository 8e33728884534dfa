"""`tally dlq list|show|replay`: look into dead-letters, and send fixed letters back."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
from faust.cli import AppCommand, argument, option

from tally.access.tokens import OPERATOR
from tally.app import app, settings
from tally.broker.watch import BrokerWatch
from tally.cli.errors import fail, parsed_by
from tally.codecs.catalog import registry
from tally.core.deadletters import REPLAYED_FROM
from tally.core.errors import UnreadableBody
from tally.dlq import (
    Letter,
    LetterFilter,
    NotReplayable,
    parse_id,
    pretty,
    read_letters,
    replay_plan,
)
from tally.ingest.gateway import BrokerUnavailable, Message
from tally.ingest.http import make_gateway


def when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


async def selected(which: LetterFilter, limit: int = 0) -> list[Letter]:
    """Matching letters, oldest first (by time, then partition and offset); the newest `limit`."""
    letters = [letter async for letter in read_letters(settings.bootstrap_servers) if which(letter)]
    letters.sort(key=lambda letter: (letter.timestamp_ms, letter.partition, letter.offset))
    return letters[-limit:] if limit else letters


def print_list(letters: list[Letter], as_json: bool) -> None:
    if as_json:
        listed = [{**letter.summary(), "preview": letter.preview()} for letter in letters]
        print(json.dumps(listed, indent=2))
        return
    if not letters:
        print("no dead letters match")
        return
    print(f"{'id':<9}{'time (UTC)':<21}{'rule':<18}{'origin':<44}reason")
    for letter in letters:
        print(
            f"{letter.id:<9}{when(letter.timestamp_ms):<21}{letter.rule:<18}"
            f"{letter.origin[:43]:<44}{letter.reason}\n{'':9}{letter.preview(110)}"
        )
    print(f"\n{len(letters)} letters; `tally dlq show ID` for one in full")


def print_letter(letter: Letter, raw: bool) -> None:
    if raw:
        sys.stdout.buffer.write(letter.value)
        return
    meta = letter.meta
    print(f"id       {letter.id}\ntime     {when(letter.timestamp_ms)} UTC")
    if meta is not None:
        print(
            f"rule     {meta.rule}\nstage    {meta.stage}\nerror    {meta.error}\n"
            f"origin   {letter.origin}\nreason   {meta.reason}"
        )
    else:
        print(f"headers  {letter.reason}")
    print(f"key      {letter.key!r}\npayload  {len(letter.value):,} bytes:")
    print(pretty(letter.value, registry()))


async def replay(letters: list[Letter], replacement: bytes | None, dry_run: bool) -> int:
    """Send each letter back; returns how many could not be."""
    broker = BrokerWatch(settings.bootstrap_servers)
    gateway = make_gateway(settings, broker)
    skipped = 0
    await broker.start()
    await gateway.start()
    try:
        for letter in letters:
            try:
                how, where = replay_plan(letter)
            except NotReplayable as exc:
                print(f"{letter.id}: not replayed: {exc}")
                skipped += 1
                continue
            value = letter.value if replacement is None else replacement
            if dry_run:
                print(f"{letter.id}: would go to {how} {where}")
                continue
            if how == "topic":
                assert letter.meta is not None
                # A keyed message is placed by its key again (a misrouted one must move);
                # an unkeyed one (an envelope) goes back to its partition.
                partition = None if letter.key else max(letter.meta.partition, 0)
                await gateway.deliver(
                    [
                        Message(
                            where,
                            letter.key,
                            value,
                            partition,
                            [
                                *letter.headers,
                                (REPLAYED_FROM, f"dead-letters:{letter.id}".encode()),
                            ],
                        )
                    ]
                )
                print(f"{letter.id}: re-sent to {where}")
                continue
            request_id = f"replay-{letter.id}"
            endpoint = gateway.endpoints[where]
            # As its sender sent it: a tenant's row stays that tenant's (the row as kept may
            # name none); an operator's keeps the tenant it names.
            sender = (letter.meta.tenant if letter.meta else "") or OPERATOR
            try:
                result = await gateway.submit(endpoint, value, request_id, True, sender)
            except UnreadableBody as exc:
                await gateway.refuse(endpoint, value, exc, request_id, len(value), sender)
                print(f"{letter.id}: POST /api/ingest/{where}: rejected again: {exc}")
                continue
            verdict = "accepted" if result.accepted else "rejected again"
            reasons = "; ".join(r.reason for r in result.rejections)
            print(f"{letter.id}: POST /api/ingest/{where}: {verdict} {reasons}".rstrip())
    finally:
        await gateway.stop()
        await broker.stop()
    return skipped


@app.command(
    argument("action", type=click.Choice(["list", "show", "replay"])),
    argument("ids", nargs=-1, callback=parsed_by(parse_id)),
    option("--rule", default=None, help="Only letters of this rule (not_finite, late, ...)."),
    option("--stage", default=None, help="Only this stage: decode, validate, late, process."),
    option("--origin", default=None, help="Only origins containing this (a topic, an endpoint)."),
    option("--request", default=None, help="Only letters of this ingest request id."),
    option(
        "--tenant",
        default=None,
        help="Only this tenant's letters ('' for those whose payload named no tenant).",
    ),
    option(
        "--limit",
        type=click.IntRange(0),
        default=50,
        show_default=True,
        help="list: the newest N (0 = all).",
    ),
    option("--json", "as_json", is_flag=True, help="list: print JSON."),
    option("--raw", is_flag=True, help="show: the payload's bytes only (to fix and re-send)."),
    option(
        "--value",
        "value_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="replay: send this file's bytes instead of the letter's (one ID only).",
    ),
    option("--dry-run", is_flag=True, help="replay: say where each letter would go."),
)
async def dlq(
    self: AppCommand,
    action: str,
    ids: tuple[str, ...],
    rule: str | None,
    stage: str | None,
    origin: str | None,
    request: str | None,
    tenant: str | None,
    limit: int,
    as_json: bool,
    raw: bool,
    value_file: Path | None,
    dry_run: bool,
) -> None:
    """Dead letters: `list` (the newest --limit, filtered by --rule/--stage/--origin/--request/
    --tenant),
    `show ID` (reason, origin, payload decoded), `replay [ID...]` (Kafka-origin letters back to
    their topic and partition; ingest rows judged again by the ingest rules). An ID is
    partition:offset."""
    which = LetterFilter(frozenset(ids), rule, stage, origin, request, tenant)
    if action == "list":
        print_list(await selected(which, limit), as_json)
        return
    if action == "show":
        if len(ids) != 1:
            fail(code=2, message="show takes exactly one ID (partition:offset)")
        letters = await selected(which)
        if not letters:
            fail(f"no dead letter {ids[0]} (see `tally dlq list`)")
        print_letter(letters[0], raw)
        return
    if value_file is not None and len(ids) != 1:
        fail(code=2, message="--value replaces one letter's payload: give exactly one ID")
    if not (ids or rule or stage or origin or request or tenant is not None):
        fail(
            code=2,
            message="replay needs IDs or a filter (--rule, --stage, --origin, --request, --tenant)",
        )
    letters = await selected(which)
    if not letters:
        fail("no dead letters match")
    replacement = value_file.read_bytes() if value_file is not None else None
    try:
        skipped = await replay(letters, replacement, dry_run)
    except BrokerUnavailable as exc:
        fail(str(exc))
    done = len(letters) - skipped
    print(f"{'would replay' if dry_run else 'replayed'} {done} of {len(letters)} letters")
