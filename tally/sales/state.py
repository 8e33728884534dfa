"""The sales pipeline's in-memory state, and the answers read from it: per purchases partition
its window and what it last published; on the worker that merges, every partition's latest
candidates. Each is a `PartitionStates`: dropped when the partition leaves this worker, rebuilt
from the tables on next use (after a failover and a failback, the tables hold what the other
worker did meanwhile).
"""

from __future__ import annotations

from tally.app import settings
from tally.core.topk import Candidates, GlobalTopK, merge_candidates
from tally.http.caching import KeptAnswers
from tally.runtime.panes import PaneWindows
from tally.runtime.routing import others
from tally.runtime.state import PartitionStates
from tally.runtime.store import scan, stored_value
from tally.runtime.topics import purchases
from tally.sales.tables import SALES_SPEC, sales_clocks, sales_panes, sales_topk, topk_candidates

#: What a partition published last: its top-K, its window's last pane, the wall ms when.
Published = tuple[list[tuple[str, int]], int, int]

#: purchases partition → its window (each waits for the other partitions' announcements).
sales_windows = PaneWindows(
    "sales", purchases.get_topic_name(), SALES_SPEC, sales_panes, sales_clocks, others
)
windows = sales_windows.windows
#: purchases partition → what it published last.
published: PartitionStates[Published] = PartitionStates(purchases.get_topic_name())
#: candidates partition (there is one) → every purchases partition's latest candidates.
latest_candidates: PartitionStates[dict[int, Candidates]] = PartitionStates(
    topk_candidates.get_topic_name()
)


#: The current top-K answers (one per tenant, `k` and stale reasons), serialized, and the
#: merges they are made from (one per tenant): both dropped whenever the latest candidates
#: change (`candidates_changed`), so that a read between two changes merges nothing.
current_body: KeptAnswers[bytes] = KeptAnswers(limit=1024)
current_merges: KeptAnswers[GlobalTopK | None] = KeptAnswers(limit=1024)


def candidates_changed() -> None:
    """Every kept answer and merge is dropped: the candidates they were made of changed."""
    current_body.invalidate()
    current_merges.invalidate()


def candidates_arrived(candidates: Candidates) -> None:
    """A partition's newest candidates replace its last: the answers made of those go."""
    load_latest()[candidates.partition] = candidates
    candidates_changed()


def load_latest() -> dict[int, Candidates]:
    """The latest candidates, from memory, or from the table after a restart or a failover."""
    latest = latest_candidates.get(0)
    if latest is None:
        candidates_changed()
        latest = latest_candidates[0] = {}
        for _, value in scan(sales_topk, 0, b"latest|", b"latest}"):
            candidates = Candidates.from_json(stored_value(value))
            latest[candidates.partition] = candidates
    return latest


def current_answer(tenant: str | None) -> GlobalTopK | None:
    """The current top-K of a tenant's items (None: of every tenant's)."""
    latest = load_latest()
    return current_merges.get(
        tenant, None, lambda: merge_candidates(latest.values(), settings.top_k, tenant)
    )


def answer_at(last_pane: int, tenant: str | None) -> GlobalTopK | None:
    """The answer for a past window, from the candidates each partition published for it."""
    start, stop = f"{last_pane:012d}|".encode(), f"{last_pane:012d}}}".encode()
    found = [Candidates.from_json(stored_value(v)) for _, v in scan(sales_topk, 0, start, stop)]
    return merge_candidates(found, settings.top_k, tenant)
