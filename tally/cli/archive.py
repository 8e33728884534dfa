"""`tally archive stats|prune|compact`: the cold tier from the command line."""

from __future__ import annotations

import asyncio
import json

import click
from faust.cli import AppCommand, argument, option

from tally.app import app, settings
from tally.archive.store import Archive, ArchiveStats, DayStats, prune_cutoff
from tally.cli.errors import parsed_by
from tally.core.clock import iso, now_ms
from tally.settings import retention_days


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:,.0f} B" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1000
    return f"{size:,.1f} TB"


def stat_fields(stats: DayStats | ArchiveStats) -> dict[str, object]:
    """What `archive stats` reports of a day or of the whole archive."""
    return {
        "files": stats.files,
        "rows": stats.rows,
        "bytes": stats.bytes,
        "oldest_minute": None if stats.oldest_ms is None else iso(stats.oldest_ms),
        "newest_minute": None if stats.newest_ms is None else iso(stats.newest_ms),
    }


def print_archive_stats(archive: Archive, per_day: bool, as_json: bool) -> None:
    stats = archive.stats()
    days = [{"day": d.day.isoformat(), **stat_fields(d)} for d in stats.days]
    summary = {"location": archive.location, "days": len(stats.days), **stat_fields(stats)}
    if as_json:
        print(json.dumps({**summary, "per_day": days} if per_day else summary, indent=2))
        return
    span = f" ({days[0]['day']} .. {days[-1]['day']})" if days else ""
    print(
        f"archive  {archive.location}\n"
        f"days     {len(stats.days)}{span}\n"
        f"files    {stats.files:,}\n"
        f"rows     {stats.rows:,}\n"
        f"size     {human_bytes(stats.bytes)}\n"
        f"oldest   {summary['oldest_minute'] or '-'}\n"
        f"newest   {summary['newest_minute'] or '-'}"
    )
    if per_day:
        print(f"\n{'day':<12}{'files':>7}{'rows':>14}{'size':>12}")
        for d in days:
            print(
                f"{d['day']:<12}{d['files']:>7}{d['rows']:>14,}{human_bytes(float(str(d['bytes']))):>12}"
            )


@app.command(
    argument("action", type=click.Choice(["stats", "prune", "compact"])),
    option(
        "--keep",
        "keep_days",
        default=None,
        callback=parsed_by(retention_days),
        help="prune: retention, e.g. 5y, 26w, 30d [default: TALLY_ARCHIVE_KEEP, 5y].",
    ),
    option("--dry-run", is_flag=True, help="prune: list the days that would be dropped."),
    option("--days", "per_day", is_flag=True, help="stats: one line per day too."),
    option("--json", "as_json", is_flag=True, help="stats: print JSON."),
)
async def archive(
    self: AppCommand,
    action: str,
    keep_days: int | None,
    dry_run: bool,
    per_day: bool,
    as_json: bool,
) -> None:
    """The cold tier in TALLY_ARCHIVE_DIR: `stats` (days, rows, bytes, oldest/newest minute),
    `prune` (drop whole days older than the retention; hot tables are not touched) or
    `compact` (merge each day's files into one per partition; safe beside running workers)."""
    store = Archive(settings.archive_location, settings.default_tenant)
    if action == "stats":
        print_archive_stats(store, per_day, as_json)
    elif action == "prune":
        keep_days = settings.archive_keep if keep_days is None else keep_days
        cutoff = prune_cutoff(now_ms(), keep_days)
        if dry_run:
            old = [d for d in store.days() if d < cutoff]
            print(f"would drop {len(old)} days before {cutoff} (keeping {keep_days} days)")
            for day in old:
                print(f"  {day}")
            return
        dropped = await asyncio.to_thread(store.prune, cutoff)
        print(f"dropped {len(dropped)} days before {cutoff} (keeping {keep_days} days)")
        for day in dropped:
            print(f"  {day}")
    else:
        days = store.days()
        merged = 0
        for number, day in enumerate(days, 1):
            partitions = sorted({f.partition for f in store.files(day)})
            for partition in partitions:
                if await asyncio.to_thread(store.compact, day, partition) is not None:
                    merged += 1
            print(f"[{number}/{len(days)}] {day}: {len(partitions)} partitions", flush=True)
        print(f"compacted {merged} (day, partition) file sets")
