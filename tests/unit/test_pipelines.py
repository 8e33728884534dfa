"""A worker runs the agents of its pipelines (TALLY_PIPELINES) and no others."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

#: What Faust's CLI does before starting a worker (`python -m tally worker`, main package tally).
DISCOVER = (
    "from faust.cli.base import prepare_app; from tally.app import app; "
    "prepare_app(app, 'tally'); print(json.dumps(sorted(app.agents)))"
)


@pytest.mark.parametrize(
    ("pipelines", "modules"),
    [
        ("sales", {"tally.sales.agents"}),
        ("metrics", {"tally.metrics.agents"}),
        ("sales,metrics", {"tally.sales.agents", "tally.metrics.agents"}),
        ("archive", {"tally.metrics.archive_sink"}),
    ],
)
def test_only_the_chosen_pipelines_agents_are_registered(pipelines: str, modules: set[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import json; {DISCOVER}"],
        env={**os.environ, "TALLY_PIPELINES": pipelines},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    agents = json.loads(done.stdout.splitlines()[-1])
    assert agents and {name.rsplit(".", 1)[0] for name in agents} == modules
