"""The mutation gate (reliability-plan §6.3): each planted bug must be caught by the chaos suite.

A planted bug is switched on in the node processes by one environment variable
(`SHOAL_BUG_*`, read by node code). Each test runs the scenario most likely to
expose it, with the bug on, and asserts that the checker's verdict is False with
at least one anomaly of the classes that bug produces. A run where the checker
stays silent means the harness is blind to that bug.

Skipped unless SHOAL_RUN_MUTATIONS=1: each case is a full chaos run (about two
minutes). Run them with::

    SHOAL_RUN_MUTATIONS=1 .venv/bin/python -m pytest -p no:cacheprovider tests/chaos/test_mutations.py

The plan asks for detection in at least 1 of 2 runs; each case therefore gets a
second run with another seed when the first one is silent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.run import RunOutcome, Timings, run_scenario
from tests.chaos.scenarios import SCENARIOS

MUTATION_TIMINGS = Timings(warmup_s=3.0, fault_s=60.0, quiet_s=5.0, drain_s=30.0)

# flag -> (scenario, anomaly classes that prove the bug was seen)
MUTATIONS: dict[str, tuple[str, frozenset[str]]] = {
    # The same append path carries the share-state log: acking it before replication
    # also loses share state on failover (seen: resurrection, delivery-count-regression).
    "SHOAL_BUG_ACK_BEFORE_REPLICATION": (
        "kill",
        frozenset(
            {
                "resurrection",
                "delivery-count-regression",
                "delivery-below-start-offset",
                "start-offset-regression",
                "unseen",
                "lost-prefix",
                "lost-middle",
                "lost-postfix",
                "inconsistent-offsets",
                "offset-regression",
                "delivered-then-truncated",
                "replica-divergence",
            }
        ),
    ),
    "SHOAL_BUG_NO_DURABLE_SHARE_STATE": (
        "kill",
        frozenset({"resurrection", "unseen", "phantom-terminal", "delivery-count-regression", "double-grant"}),
    ),
    "SHOAL_BUG_STALE_ACKS": ("pause", frozenset({"stale-ack-accepted", "resurrection", "phantom-terminal"})),
    "SHOAL_BUG_START_OFFSET_NOT_PERSISTED": (
        "kill",
        frozenset({"start-offset-regression", "delivery-below-start-offset", "resurrection"}),
    ),
    "SHOAL_BUG_DELIVERY_COUNT_NOT_RAISED_AFTER_FAILOVER": (
        "kill",
        frozenset({"double-grant", "delivery-count-regression", "delivery-count-out-of-range"}),
    ),
}

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.multiprocess,
    pytest.mark.xdist_group("chaos"),
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        os.environ.get("SHOAL_RUN_MUTATIONS") != "1", reason="mutation runs take minutes; set SHOAL_RUN_MUTATIONS=1"
    ),
]


def _caught(outcome: RunOutcome, expected: frozenset[str]) -> set[str]:
    assert outcome.result is not None
    return set(outcome.result.failing_classes) & expected


@pytest.mark.parametrize("flag", sorted(MUTATIONS))
def test_planted_bug_is_caught(flag: str, tmp_path: Path) -> None:
    scenario, expected = MUTATIONS[flag]
    outcomes = []
    for attempt, seed in enumerate((101, 202)):
        outcome = run_scenario(
            SCENARIOS[scenario],
            tmp_path / f"{scenario}-{attempt}",
            seed=seed,
            timings=MUTATION_TIMINGS,
            # Coverage is not the question here: a violation makes the verdict False anyway.
            gates={},
            extra_env={flag: "1"},
        )
        assert outcome.error is None, f"harness error in {outcome.out_dir}:\n{outcome.error}"
        outcomes.append(outcome)
        if outcome.valid is False and _caught(outcome, expected):
            return
    details = "; ".join(
        f"{o.out_dir}: verdict {o.valid}, failing {o.result.failing_classes if o.result else None}" for o in outcomes
    )
    pytest.fail(f"{flag} was not caught in 2 runs of {scenario} (expected one of {sorted(expected)}): {details}")
