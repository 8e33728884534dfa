"""`tally fraud publish-model FILE` and `tally fraud train-model`: the fraud pipeline's models
(tally.fraud.models, tally.fraud.training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from aiokafka.errors import KafkaError
from faust.cli import AppCommand, argument, option

from tally.app import app, settings
from tally.cli.errors import fail
from tally.core.clock import epoch_ms, iso, now_ms
from tally.core.errors import BrokerError
from tally.core.fraud import ModelError
from tally.fraud.models import ACTIVATION_DELAY_MS, publish, read_model_file
from tally.topics import FRAUD_MODELS


@app.command(
    argument("action", type=click.Choice(["publish-model", "train-model"])),
    argument("file", type=click.Path(dir_okay=False, path_type=Path)),
    option(
        "--at",
        default=None,
        help="publish-model: the order time (ISO 8601 or epoch ms) from which the model "
        f"decides [default: now + {ACTIVATION_DELAY_MS / 1000:g} s].",
    ),
    option(
        "--version", "version", default="v1", show_default=True, help="train-model: its version."
    ),
    option(
        "--orders",
        type=click.IntRange(1_000, 10_000_000),
        default=80_000,
        show_default=True,
        help="train-model: generated orders to train on (as many again to evaluate).",
    ),
    option("--seed", type=int, default=1, show_default=True, help="train-model: the data's seed."),
    option(
        "--review",
        type=float,
        default=0.1,
        show_default=True,
        help="train-model: review from this probability.",
    ),
    option(
        "--reject",
        type=float,
        default=0.9,
        show_default=True,
        help="train-model: reject from this probability.",
    ),
)
async def fraud(
    self: AppCommand,
    action: str,
    file: Path,
    at: str | None,
    version: str,
    orders: int,
    seed: int,
    review: float,
    reject: float,
) -> None:
    """publish-model FILE: every worker decides orders from `--at` on with this model (no
    restart). train-model FILE: fit a model on generated orders (needs scikit-learn:
    pip install -e '.[train]') and write it to FILE."""
    if action == "train-model":
        try:
            from tally.fraud.training import train
        except ImportError:  # pragma: no cover - depends on the environment
            fail("training needs scikit-learn: pip install -e '.[train]'")
        print(f"training {version} on {orders:,} generated orders ...", file=sys.stderr, flush=True)
        model, quality = train(version, orders, seed, review, reject)
        record = model.to_record()
        record["trained"] = {**record["trained"], "held_out": quality}
        file.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {file}: {json.dumps(quality)}")
        return
    try:
        model = read_model_file(file)
        effective = None if at is None else epoch_ms(at)
    except (ModelError, ValueError) as exc:
        fail(str(exc))
    if effective is not None and effective < now_ms():
        fail(
            f"--at {at} is past: orders placed since were decided by the model before; "
            "give a time to come"
        )
    try:
        published = await publish(
            settings.bootstrap_servers, FRAUD_MODELS, settings.replication, model, effective
        )
    except ModelError as exc:
        fail(str(exc))
    except (KafkaError, BrokerError, OSError) as exc:
        fail(f"could not publish to the broker at {settings.broker} ({type(exc).__name__}: {exc})")
    print(
        f"published model {published.version}: it decides orders placed from "
        f"{iso(published.effective_from_ms)} on, on every worker"
    )
