"""The router's remembered key owners (faust_compat.remember_key_owners): Faust's own lookup
runs once per key and assignment, and an assignment's new map of partition URLs is used at
once; so does the answer to whether the owner is this worker (faust_compat.KeyOwners)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from faust.app.router import Router
from faust.assignor.partition_assignor import PartitionAssignor
from yarl import URL

import tally.app  # noqa: F401  (installs the patch)
from tally.runtime import faust_compat


class Assignor:
    """Faust's assignor as the router uses it: the URL of a serialized key's partition."""

    def __init__(self) -> None:
        self._tps_url: dict[str, str] = {}
        self.lookups: list[bytes] = []

    def key_store(self, topic: str, key: bytes) -> URL:
        self.lookups.append(key)
        return URL(self._tps_url[key.decode()])


def router(assignor: Assignor) -> Router:
    topic = SimpleNamespace(
        get_topic_name=lambda: "sales-topk-changelog",
        prepare_key=lambda key, _serializer: (key.encode(), None),
    )
    app: Any = SimpleNamespace(
        assignor=assignor, tables={"sales_topk": SimpleNamespace(changelog_topic=topic)}
    )
    return Router(app)


def test_an_owner_is_looked_up_once_per_assignment() -> None:
    assignor = Assignor()
    assignor._tps_url = {"top": "http://a:6066", "other": "http://b:6066"}
    routes = router(assignor)
    assert routes.key_store("sales_topk", "top") == URL("http://a:6066")
    assert routes.key_store("sales_topk", "top") == URL("http://a:6066")
    assert routes.key_store("sales_topk", "other") == URL("http://b:6066")
    assert assignor.lookups == [b"top", b"other"]

    assignor._tps_url = {"top": "http://b:6066", "other": "http://b:6066"}  # a new assignment
    assert routes.key_store("sales_topk", "top") == URL("http://b:6066")
    assert assignor.lookups == [b"top", b"other", b"top"]


def test_a_key_without_owner_is_not_remembered() -> None:
    assignor = Assignor()
    routes = router(assignor)
    for _ in range(2):
        with pytest.raises(KeyError):  # no partition owns the key yet: Faust's 503
            routes.key_store("sales_topk", "top")
    assert assignor.lookups == [b"top", b"top"]


def test_the_memory_is_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(faust_compat, "KNOWN_OWNERS_MAX", 2)
    assignor = Assignor()
    assignor._tps_url = {key: "http://a:6066" for key in "xyz"}
    routes = router(assignor)
    for key in "xyzx":
        routes.key_store("sales_topk", key)
    assert assignor.lookups == [b"x", b"y", b"z", b"x"]  # cleared when full, at z


def test_faust_replaces_the_map_of_partition_urls_at_each_assignment() -> None:
    """What the memory relies on: an assignment gives the assignor a new map (never changes
    the old one in place), so owners found in the old one are forgotten."""
    assignor: Any = PartitionAssignor.__new__(PartitionAssignor)
    assignor.changelog_distribution = {"http://a:6066": {"sales-topk-changelog": [0]}}
    before = assignor._tps_url
    kept = dict(before)
    assignor.changelog_distribution = {"http://b:6066": {"sales-topk-changelog": [0]}}
    assert assignor._tps_url is not before and before == kept


def test_whether_a_key_is_here_is_found_once_per_assignment() -> None:
    """What a query for a key this worker owns is answered by at once (routed_by_key)."""
    assignor = Assignor()
    assignor._tps_url = {"top": "http://a:6066", "other": "http://b:6066"}
    routes = router(assignor)
    routes.app.conf = SimpleNamespace(canonical_url=URL("http://a:6066"))
    owns_key = faust_compat.owns_key  # the app's memory, over Faust's own lookup
    assert owns_key(routes, "sales_topk", "top")
    assert not owns_key(routes, "sales_topk", "other")
    assert not owns_key(routes, "sales_topk", "nobody's")  # no owner yet: routing's 503
    assert owns_key(routes, "sales_topk", "top")
    assert routes.key_store("sales_topk", "other") == URL("http://b:6066")  # (remembered)
    assert assignor.lookups == [b"top", b"other", b"nobody's"]

    assignor._tps_url = {"top": "http://b:6066", "other": "http://a:6066"}  # a new assignment
    assert not owns_key(routes, "sales_topk", "top")
    assert owns_key(routes, "sales_topk", "other")
