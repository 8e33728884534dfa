"""bench.loop_steps: a loop probe's lines summed by kind of step within a stretch of time."""

from __future__ import annotations

from pathlib import Path

from bench.loop_steps import summarise

PROBE_LINES = [
    "100.5 9.0 MainThread <Task pending name='Task-7' coro=<Agent._execute_actor() "
    "running at x.py:1> @ _execute_actor:698",
    "101.0 3.5 MainThread <Task pending name='Task-9' coro=<Service._execute_task() "
    "running at y.py:2> @ _execute_task:878>_fetcher:177>_drain_messages:1204>sleep:640",
    "101.2 1.5 MainThread <Task pending name='Task-7' coro=<Agent._execute_actor() "
    "running at x.py:1> @ _execute_actor:698",
    "101.4 12.0 GC gen2 collected=30",
    "99.0 50.0 MainThread <Task pending name='Task-7' coro=<Agent._execute_actor() "
    "running at x.py:1> @ _execute_actor:698",
    "101.6 4",  # cut short: the worker was killed while writing it
]


def test_steps_are_summed_by_thread_task_and_where_a_service_step_ended(tmp_path: Path) -> None:
    probe = tmp_path / "steps.1"
    probe.write_text("\n".join(PROBE_LINES) + "\n")
    assert summarise(probe, 100.0, 102.0) == {
        "MainThread Agent._execute_actor": [9.0, 1.5],
        "MainThread Service._execute_task @ _execute_task:878>_fetcher:177>"
        "_drain_messages:1204>sleep:640": [3.5],
        "GC gen2": [12.0],
    }
