"""Which source offsets a worker was processing when it died, kept on disk. No Faust here.

An exception inside a pipeline is caught, and the events that cause it are dead-lettered. A
death is not an exception: an event that makes the process die (memory, a native library, a
send the producer refuses later) comes again after the restart, uncommitted, and kills it
again: a crash loop. So before processing, each partition's offsets are written down
(`InFlight`); a worker that finds the offsets it is handed in a record left by the process
before it knows they were in flight when that process died:

1. it processes them one at a time, one event in the whole worker at a time, recording which
   one is alone in flight;
2. an event that was alone in flight at DEATHS_ALONE deaths is quarantined on the next start:
   dead-lettered without being processed, and the pipeline goes on.

A poison event thus costs three deaths (its batch, then alone twice), not a crash loop. A
record names an event only while that event's processing (and its sends) are under way, and
one event at a time: a death while other work runs is not charged to an event that was not
running, and an innocent event is quarantined only if the worker dies twice while it, each
time, was the one event alone in flight (a kill loop rarely lands twice on the same event).
Records stay until the next batch replaces them: a restart finds offsets that were committed
meanwhile outside them, and ignores the record.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

#: The folder of the records in a worker's data dir.
IN_FLIGHT_DIR = "in-flight"
#: An event alone in flight at this many deaths is quarantined.
DEATHS_ALONE = 2
#: A record is written over the one before in a single write of this many bytes (its JSON,
#: 163 at most with five 64-bit ints, padded with spaces) at the start of its file: inside
#: one page, which Linux copies whole or not at all when the process is killed meanwhile (no
#: fsync: a power loss may lose it, as it may lose any record).
RECORD_BYTES = 256


@dataclass(frozen=True)
class InFlight:
    """Offsets first..last of one partition, being processed. `deaths`: deaths with these
    offsets in flight before this record; `single`: the one offset processed alone now (after
    a death or an exception), `alone_deaths`: deaths with it alone in flight before."""

    first: int
    last: int
    deaths: int = 0
    single: int | None = None
    alone_deaths: int = 0

    def holds(self, offset: int) -> bool:
        return self.first <= offset <= self.last

    def quarantines(self, offset: int) -> bool:
        """Whether this record, left by a dead process, sets `offset` aside: it was alone in
        flight at that death and at the ones before it, DEATHS_ALONE in all."""
        return self.single == offset and self.alone_deaths + 1 >= DEATHS_ALONE

    def alone(self, offset: int, first: int, last: int) -> InFlight:
        """The record while `offset` (of first..last) is processed alone after the death
        that left this record."""
        alone_deaths = self.alone_deaths + 1 if self.single == offset else 0
        return InFlight(first, last, self.deaths + 1, offset, alone_deaths)

    def done(self) -> InFlight:
        """The record once its single event is processed: it names none."""
        return InFlight(self.first, self.last, self.deaths)


class InFlightRecords:
    """One small JSON file per partition in `directory`, kept open and written over in place
    (a batch costs one write, not a new file and a rename). Records left by an earlier process
    are read once, at the first question about a partition; a record written by this process
    is never taken for a death. The folder is only ever removed before the first record
    (broker.identity, when a worker starts): a file removed while open would take the
    records written after it nowhere."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._left_behind: dict[str, InFlight] | None = None
        self._files: dict[str, int] = {}

    @staticmethod
    def _name(topic: str, partition: int) -> str:
        """A partition's record: its file's stem, and its key among those left behind."""
        return f"{topic}.{partition}"

    def _load(self) -> dict[str, InFlight]:
        found: dict[str, InFlight] = {}
        if self.directory.is_dir():
            for path in self.directory.glob("*.json"):
                try:
                    found[path.stem] = InFlight(**json.loads(path.read_text()))
                except (ValueError, TypeError):
                    continue  # a record cut short by the death itself: nothing to go on
        return found

    def left_behind(self, topic: str, partition: int, first_offset: int) -> InFlight | None:
        """The record an earlier process left for this partition while offsets from
        `first_offset` on may still fall in it (a redelivered range can come in several
        batches); dropped once the partition has moved past it."""
        if self._left_behind is None:
            self._left_behind = self._load()
        name = self._name(topic, partition)
        left = self._left_behind.get(name)
        if left is not None and first_offset > left.last:
            del self._left_behind[name]
            return None
        return left

    def set_aside(self, topic: str, partition: int) -> None:
        """The single event of the left record was quarantined: it names none any more."""
        name = self._name(topic, partition)
        if self._left_behind is not None and name in self._left_behind:
            self._left_behind[name] = self._left_behind[name].done()

    def record(self, topic: str, partition: int, in_flight: InFlight) -> None:
        """Write the record over the partition's last one."""
        if self._left_behind is None:
            self._left_behind = self._load()
        name = self._name(topic, partition)
        file = self._files.get(name)
        if file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            file = os.open(self.directory / f"{name}.json", os.O_WRONLY | os.O_CREAT, 0o600)
            self._files[name] = file
        record = json.dumps(asdict(in_flight)).encode()
        assert len(record) <= RECORD_BYTES, record
        os.pwrite(file, record.ljust(RECORD_BYTES), 0)
