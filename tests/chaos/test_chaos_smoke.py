"""The chaos smoke run of `make test`: the kill and pause scenarios, about a minute each.

Each run is a real 3-node cluster on 127.0.0.1 with the full workload, a short
fault window, heal, quiet, drain and final dumps, checked by the same checker as
`make chaos`. The coverage gates are scaled down for the short window but are
explicit and non-zero: a run that saw no failover, no coordinator move, no
archive or no refused stale acknowledgement proves nothing and fails here.
On failure the run directory (history, report.json, summary.txt, node logs) is
named in the assertion message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.run import Timings, run_scenario
from tests.chaos.scenarios import SCENARIOS

SMOKE_TIMINGS = Timings(warmup_s=3.0, fault_s=35.0, quiet_s=5.0, drain_s=30.0)
SMOKE_GATES = {
    "faults": 2,
    "leader_changes": 1,
    "coordinator_moves": 1,
    "acked_produces": 300,
    "redeliveries": 20,
    "delivery_limit_archives": 2,
    "failed_acks": 3,
}

pytestmark = [pytest.mark.chaos, pytest.mark.multiprocess, pytest.mark.xdist_group("chaos"), pytest.mark.timeout(280)]


@pytest.mark.parametrize("name,seed", [("kill", 11), ("pause", 12)])
def test_smoke_scenario_passes(name: str, seed: int, tmp_path: Path) -> None:
    outcome = run_scenario(
        SCENARIOS[name], tmp_path / name, seed=seed, timings=SMOKE_TIMINGS, gates=SMOKE_GATES
    )
    assert outcome.result is not None
    summary = (outcome.out_dir / "summary.txt").read_text()
    assert outcome.error is None, f"harness error in {outcome.out_dir}:\n{outcome.error}"
    assert outcome.valid is True, f"{name}: verdict {outcome.valid} ({outcome.out_dir})\n{summary[:6000]}"
