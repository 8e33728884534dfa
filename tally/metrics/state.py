"""The metrics pipeline's in-memory state: per metric-samples partition its event clock, how far
its minutes were emitted and its servers; per index partition how far retention ran. Each is a
`PartitionStates`: dropped when the partition leaves this worker, rebuilt from the tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tally.core.rollups import final_before
from tally.core.windowing import EventClock
from tally.metrics.tables import (
    SERIES_PARTS,
    metric_clocks,
    metric_index_watermarks,
    rollups_by_metric,
    server_rollups,
)
from tally.runtime.cells import read_cell
from tally.runtime.routing import others
from tally.runtime.state import PartitionStates
from tally.runtime.store import first_parts, partition_key, scan
from tally.runtime.topics import metric_samples


@dataclass
class PartitionState:
    """What this worker knows of one metric-samples partition it owns."""

    clock: EventClock
    late_events: int = 0
    #: Every minute before this is closed: being emitted to metric-rollups-1m, or emitted
    #: (None: nothing yet).
    final_through: int | None = None
    #: Every minute before this was emitted, the broker has it: what `record` keeps. A batch
    #: may write the record while minutes are being sent, and the record must not say they
    #: were (a crash before they are acknowledged would lose them).
    emitted_through: int | None = None
    #: The oldest minute accepted before anything was emitted: where emission starts.
    first_minute: int | None = None
    #: The last metric-samples offset folded into the tables (None: none yet).
    offset: int | None = None
    pruned_through: int = 0
    #: Its servers, each `scoped` by its tenant.
    servers: set[str] = field(default_factory=set)
    #: A batch of this partition is being folded: its samples are accepted but not yet
    #: written, so no minute may be emitted as final until it is.
    folding: bool = False

    def record(self) -> dict[str, object]:
        return {
            **self.clock.record(),
            "late_events": self.late_events,
            "final_through": self.emitted_through,
            "first_minute": self.first_minute,
            "offset": self.offset,
        }

    def closed_before(self, watermark: int | None) -> int | None:
        """Minutes before this are final: by the watermark, or already emitted (a minute once
        emitted stays closed even if a later batch reads an older wall clock)."""
        by_watermark = final_before(watermark)
        if self.final_through is None:
            return by_watermark
        return self.final_through if by_watermark is None else max(by_watermark, self.final_through)


#: metric-samples partition → its state, restored from `metric_clocks` (and a skip-scan of
#: servers) on first use.
states: PartitionStates[PartitionState] = PartitionStates(metric_samples.get_topic_name())
#: metric-index partition → the retention horizon already applied there.
index_pruned_through: PartitionStates[int] = PartitionStates(rollups_by_metric.get_topic_name())


def state_for(partition: int) -> PartitionState:
    state = states.get(partition)
    if state is None:
        saved = read_cell(metric_clocks, partition_key(partition), partition) or {}
        state = states[partition] = PartitionState(
            clock=EventClock.from_record(saved, others(partition)),
            late_events=int(saved.get("late_events", 0)),
            final_through=saved.get("final_through"),
            emitted_through=saved.get("final_through"),
            first_minute=saved.get("first_minute"),
            offset=saved.get("offset"),
            servers=set(first_parts(server_rollups, partition, SERIES_PARTS)),
        )
    return state


def index_watermark(partition: int) -> int | None:
    """An index partition's watermark: the slowest upstream partition's (None: none yet)."""
    marks = [int(v) for _, v in scan(metric_index_watermarks, partition, b"", b"\xff")]
    return min(marks) if marks else None
