"""The chaos soak, short (`make soak` runs it for 5 minutes): three workers with standbys under a
steady load, a random one SIGKILLed every 10-15 s and restarted; then every view, the
final-minutes topic and the archive equal brute force over every acknowledged event."""

from __future__ import annotations

import signal
from pathlib import Path

from bench.soak import soak, soak_workers
from tally.broker.local import LocalBroker
from tally.codecs.avro import AvroCodec
from tests.conftest import WorkerFactory
from tests.load import Load


def test_workers_killed_again_and_again_lose_nothing_and_count_nothing_twice(
    broker: LocalBroker,
    make_worker: WorkerFactory,
    purchase_codec: AvroCodec,
    metric_batch_codec: AvroCodec,
    tmp_path: Path,
) -> None:
    archive_dir = tmp_path / "archive"
    workers = soak_workers(make_worker, archive_dir)
    load = Load(broker.bootstrap, purchase_codec, metric_batch_codec)
    try:
        report = soak(
            workers, load, archive_dir, seconds=45, kill_every=(10.0, 15.0), min_kills=3, seed=7
        )
    finally:
        for worker in workers:  # a clean stop waits on the archive sink's open files
            worker.stop(signal.SIGKILL)
    print(report.summary())
    assert len(report.kills) >= 3, report.summary()
    assert report.purchases and report.samples and report.archived
    assert not report.problems(), report.summary()
