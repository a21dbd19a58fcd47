"""Self-tests of the chaos checker: one synthetic history per anomaly class.

Each anomaly test builds a small but complete run (produces, fetches, acks and
final dumps from three nodes) that is clean except for one planted fault, and
asserts that exactly that class, and no other, is flagged. A clean run, an
ambiguous run (info produces, info acks, retries, a reset) and the coverage gates
are checked too, so that the checker is neither blind nor trigger-happy.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from tests.chaos.checker import ANOMALY_CLASSES, check, main
from tests.chaos.history import (
    HistoryFormatError,
    HistoryRecorder,
    Op,
    load_history,
    pair_operations,
    write_history,
)
from tests.chaos.report import write_report

LOCK_MS = 2000
LIMIT = 4
NODES = ("n1", "n2", "n3")


class Run:
    """Builds a synthetic history; ops are 1 ms apart unless `tick` says otherwise."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.now_ms = 0

    def tick(self, ms: int) -> None:
        self.now_ms += ms

    def _append(self, process: Any, op_type: str, f: str, value: Any, node: Any = None) -> Op:
        self.now_ms += 1
        op = Op(len(self.ops), process, op_type, f, value, self.now_ms * 1_000_000, node)
        self.ops.append(op)
        return op

    def _complete(self, process: Any, f: str, outcome: str | None, value: Any, node: Any) -> None:
        if outcome == "ok":
            self._append(process, "ok", f, value, node)
        elif outcome == "fail":
            self._append(process, "fail", f, {"error": "NOT_LEADER_OR_FOLLOWER"}, node)
        elif outcome == "info":
            self._append(process, "info", f, {"reason": "timeout"}, node)

    def produce(self, partition: int, value: str, offset: int | None = None, outcome: str | None = "ok") -> None:
        process = value.split("-")[0]
        self._append(process, "invoke", "produce", {"partition": partition, "value": value})
        self._complete(process, "produce", outcome, {"partition": partition, "offset": offset, "value": value}, "n1")

    def fetch(
        self,
        member: str,
        records: list[tuple[int, int, str, int]],
        node: str = "n1",
        epoch: int = 1,
        outcome: str | None = "ok",
        deadlines: list[int] | None = None,
    ) -> None:
        self._append(member, "invoke", "share_fetch", {"member": member})
        deadline = self.now_ms + LOCK_MS
        rows = [
            {
                "partition": partition,
                "offset": offset,
                "value": value,
                "delivery_count": count,
                "member": member,
                "lock_deadline_ms": deadlines[position] if deadlines else deadline,
                "leader_epoch": epoch,
            }
            for position, (partition, offset, value, count) in enumerate(records)
        ]
        self._complete(member, "share_fetch", outcome, {"records": rows}, node)

    def ack(
        self,
        member: str,
        acks: list[tuple[int, int, str]],
        results: list[str] | None = None,
        outcome: str | None = "ok",
    ) -> None:
        self._append(member, "invoke", "ack", {"member": member, "acks": [list(ack) for ack in acks]})
        results = results or ["ok"] * len(acks)
        rows = [[partition, offset, result] for (partition, offset, _), result in zip(acks, results)]
        self._complete(member, "ack", outcome, {"results": rows}, "n1")

    def consume(self, member: str, records: list[tuple[int, int, str]]) -> None:
        self._append(member, "invoke", "consume", {"member": member})
        rows = [{"partition": p, "offset": o, "value": v} for p, o, v in records]
        self._complete(member, "consume", "ok", {"records": rows}, "n1")

    def event(self, f: str, value: Any) -> None:
        self._append("nemesis", "info", f, value)

    def sample(self, node: str, partition: int, start_offset: int, high_watermark: int = 100) -> None:
        self.event(
            "sample",
            {
                "node": node,
                "partition": partition,
                "start_offset": start_offset,
                "high_watermark": high_watermark,
                "log_start_offset": 0,
            },
        )

    def dump(
        self,
        node: str,
        log: dict[int, str],
        start_offset: int | None,
        states: list[list[Any]] = (),
        high_watermark: int | None = None,
    ) -> None:
        if high_watermark is None:
            high_watermark = max(log) + 1 if log else 0
        partition = {
            "log": [[offset, value] for offset, value in sorted(log.items())],
            "high_watermark": high_watermark,
            "start_offset": start_offset,
            "states": [list(run) for run in states],
        }
        self.event("final_dump", {"node": node, "partitions": {"0": partition}})

    def dumps(self, log: dict[int, str], start_offset: int | None, states: list[list[Any]] = ()) -> None:
        for node in NODES:
            self.dump(node, log, start_offset, states)

    def settle(self, member: str, records: list[tuple[int, int, str, int]], kind: str = "ACCEPT") -> None:
        """Fetch records and acknowledge all of them, successfully."""
        self.fetch(member, records)
        self.ack(member, [(partition, offset, kind) for partition, offset, _, _ in records])


def run_check(run: Run, **overrides: Any):
    arguments: dict[str, Any] = {"delivery_limit": LIMIT, "lock_duration_ms": LOCK_MS, "coverage_gates": {}}
    arguments.update(overrides)
    return check(run.ops, **arguments)


def flagged(result) -> set[str]:
    return {name for name, evidence in result.anomalies.items() if evidence}


def clean_run() -> Run:
    """Three records: accepted; released then accepted by another member; rejected."""
    run = Run()
    for offset in range(3):
        run.produce(0, f"P1-{offset}", offset)
    run.sample("n1", 0, 0)
    run.fetch("m1", [(0, 0, "P1-0", 1), (0, 1, "P1-1", 1), (0, 2, "P1-2", 1)])
    run.ack("m1", [(0, 0, "ACCEPT"), (0, 1, "RELEASE"), (0, 2, "REJECT")])
    run.event("kill", {"targets": ["n2"]})
    run.event("leader_change", {"partition": 0, "old": "n1", "new": "n1"})
    run.event("restart", {"targets": ["n2"]})
    run.settle("m2", [(0, 1, "P1-1", 2)])
    run.consume("c1", [(0, 0, "P1-0"), (0, 1, "P1-1"), (0, 2, "P1-2")])
    run.sample("n1", 0, 3)
    run.dumps({0: "P1-0", 1: "P1-1", 2: "P1-2"}, start_offset=3)
    return run


def test_clean_history_is_valid() -> None:
    result = run_check(clean_run())
    assert flagged(result) == set()
    assert result.valid is True
    assert result.stats["coverage_counts"]["redeliveries"] == 1


# ---- one history per anomaly class --------------------------------------------------


def lost_run(lost_sequence: int) -> Run:
    """P1-0..P1-2 acked; the one at lost_sequence is never read and not in the final log."""
    run = Run()
    for offset in range(3):
        run.produce(0, f"P1-{offset}", offset)
    kept = [(0, offset, f"P1-{offset}", 1) for offset in range(3) if offset != lost_sequence]
    run.settle("m1", kept)
    run.dumps({offset: value for _, offset, value, _ in kept}, start_offset=3)
    return run


@pytest.mark.parametrize(
    ("lost_sequence", "name"), [(0, "lost-prefix"), (1, "lost-middle"), (2, "lost-postfix")]
)
def test_lost_is_split_per_producer(lost_sequence: int, name: str) -> None:
    result = run_check(lost_run(lost_sequence))
    assert flagged(result) == {name}
    assert result.valid is False
    (evidence,) = result.anomalies[name]
    assert evidence["value"] == f"P1-{lost_sequence}"
    assert evidence["ops"][:2] == [2 * lost_sequence, 2 * lost_sequence + 1]


def test_lost_middle_is_definite_without_final_dumps_but_the_ends_are_not() -> None:
    for lost_sequence, expected in ((1, False), (2, "unknown")):
        run = lost_run(lost_sequence)
        run.ops = [op for op in run.ops if op.f != "final_dump"]
        result = run_check(run)
        assert result.valid == expected
        assert flagged(result) == ({"lost-middle"} if lost_sequence == 1 else set())


def test_unseen_acked_record_still_available_at_the_end() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.dumps({0: "P1-0"}, start_offset=0, states=[[0, 0, "AVAILABLE", 0]])
    result = run_check(run)
    assert flagged(result) == {"unseen"}


def test_unexpected_value_never_produced() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.settle("m1", [(0, 0, "P1-0", 1), (0, 1, "X-9", 1)])
    run.dumps({0: "P1-0", 1: "X-9"}, start_offset=2)
    result = run_check(run)
    assert flagged(result) == {"unexpected"}
    assert result.anomalies["unexpected"][0]["value"] == "X-9"


def test_aborted_read_of_a_definitely_failed_produce() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.produce(0, "P1-1", outcome="fail")
    run.settle("m1", [(0, 0, "P1-0", 1), (0, 1, "P1-1", 1)])
    run.dumps({0: "P1-0", 1: "P1-1"}, start_offset=2)
    result = run_check(run)
    assert flagged(result) == {"aborted-read"}
    assert result.anomalies["aborted-read"][0]["value"] == "P1-1"


def test_inconsistent_offsets_two_values_at_one_offset() -> None:
    run = Run()
    run.produce(0, "P1-0", outcome="info")
    run.produce(0, "P2-0", outcome="info")
    run.fetch("m1", [(0, 0, "P1-0", 1)])
    run.tick(LOCK_MS)
    run.settle("m2", [(0, 0, "P2-0", 2)])
    run.dumps({0: "P2-0"}, start_offset=1)
    result = run_check(run)
    assert flagged(result) == {"inconsistent-offsets"}
    assert set(result.anomalies["inconsistent-offsets"][0]["values"]) == {"P1-0", "P2-0"}


def test_duplicate_append_of_a_value_produced_once() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.settle("m1", [(0, 0, "P1-0", 1), (0, 1, "P1-0", 1)])
    run.dumps({0: "P1-0", 1: "P1-0"}, start_offset=2)
    result = run_check(run)
    assert flagged(result) == {"duplicate-append"}


def test_offset_regression_of_a_later_acked_produce() -> None:
    run = Run()
    run.produce(0, "P1-0", 5)
    run.produce(0, "P1-1", 3)
    run.settle("m1", [(0, 3, "P1-1", 1), (0, 5, "P1-0", 1)])
    run.dumps({3: "P1-1", 5: "P1-0"}, start_offset=6)
    result = run_check(run)
    assert flagged(result) == {"offset-regression"}
    assert result.anomalies["offset-regression"][0]["ops"] == [0, 1, 2, 3]


def test_overlapping_produces_may_land_in_any_order() -> None:
    run = Run()
    run._append("P1", "invoke", "produce", {"partition": 0, "value": "P1-0"})
    run.produce(0, "P2-0", 0)
    run._append("P1", "ok", "produce", {"partition": 0, "offset": 1, "value": "P1-0"}, "n1")
    run.settle("m1", [(0, 0, "P2-0", 1), (0, 1, "P1-0", 1)])
    run.dumps({0: "P2-0", 1: "P1-0"}, start_offset=2)
    assert flagged(run_check(run)) == set()


def test_resurrection_after_an_ok_accept() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.settle("m1", [(0, 0, "P1-0", 1)])
    run.tick(LOCK_MS)
    run.settle("m2", [(0, 0, "P1-0", 2)])
    run.dumps({0: "P1-0"}, start_offset=1)
    result = run_check(run)
    assert flagged(result) == {"resurrection"}
    assert result.anomalies["resurrection"][0]["via"] == "fetch"


def test_resurrection_seen_in_the_final_state() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.settle("m1", [(0, 0, "P1-0", 1)])
    run.dumps({0: "P1-0"}, start_offset=0, states=[[0, 0, "AVAILABLE", 1]])
    result = run_check(run)
    # The record is also not terminal, so the drain did not finish either.
    assert flagged(result) == {"resurrection", "unseen"}
    assert result.anomalies["resurrection"][0]["via"] == "final_dump"


def test_double_grant_of_one_delivery_count() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.fetch("m1", [(0, 0, "P1-0", 1)])
    run.tick(LOCK_MS)
    run.settle("m2", [(0, 0, "P1-0", 1)])
    run.dumps({0: "P1-0"}, start_offset=1)
    result = run_check(run)
    assert flagged(result) == {"double-grant"}


def test_lock_overlap_is_a_warning_only() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.fetch("m1", [(0, 0, "P1-0", 1)])
    run.tick(LOCK_MS // 4)
    run.settle("m2", [(0, 0, "P1-0", 2)])
    run.dumps({0: "P1-0"}, start_offset=1)
    result = run_check(run)
    assert flagged(result) == {"lock-overlap-suspect"}
    assert result.valid is True


@pytest.mark.parametrize("between", ["release", "leave", "kill", "leader_change"])
def test_lock_overlap_is_explained_by_a_release_leave_or_failover(between: str) -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.fetch("m1", [(0, 0, "P1-0", 1)])
    if between == "release":
        run.ack("m1", [(0, 0, "RELEASE")])
    elif between == "leave":
        run._append("m1", "info", "leave", {"member": "m1"})
    elif between == "kill":
        run.event("kill", {"targets": ["n1"]})
    else:
        run.event("leader_change", {"partition": 0, "old": "n1", "new": "n1"})
    run.tick(LOCK_MS // 4)
    run.settle("m2", [(0, 0, "P1-0", 2)])
    run.dumps({0: "P1-0"}, start_offset=1)
    assert flagged(run_check(run)) == set()


def _overlapping_polls(release: bool) -> Run:
    """Member m2's poll is invoked first and runs long; m1's poll, invoked later, gets
    delivery count 1 and (if `release`) RELEASEs it; m2's poll then returns count 2."""
    run = Run()
    run.produce(0, "P1-0", 0)
    run._append("m2", "invoke", "share_fetch", {"member": "m2"})
    run._append("m1", "invoke", "share_fetch", {"member": "m1"})
    row = {"partition": 0, "offset": 0, "value": "P1-0", "member": "m1", "lock_deadline_ms": None, "leader_epoch": 1}
    run._append("m1", "ok", "share_fetch", {"records": [{**row, "delivery_count": 1}]}, "n1")
    if release:
        run.ack("m1", [(0, 0, "RELEASE")])
    run.tick(LOCK_MS // 4)
    run._append("m2", "ok", "share_fetch", {"records": [{**row, "member": "m2", "delivery_count": 2}]}, "n1")
    run.ack("m2", [(0, 0, "ACCEPT")])
    run.dumps({0: "P1-0"}, start_offset=1)
    return run


def test_lock_overlap_orders_a_pair_by_delivery_count_not_by_invoke_time() -> None:
    # Count 2 was granted after m1 released count 1, although m2's fetch was invoked
    # before m1's: no overlap. (Ordered by invoke time this was flagged, because m2,
    # the "first" holder, never released anything.)
    assert flagged(run_check(_overlapping_polls(release=True))) == set()
    # Without the release, count 2 was granted while count 1's lock was still valid.
    result = run_check(_overlapping_polls(release=False))
    assert flagged(result) == {"lock-overlap-suspect"}
    assert result.anomalies["lock-overlap-suspect"][0]["delivery_counts"] in ([1, 2], [2, 1])


def test_delivery_count_above_the_limit() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.settle("m1", [(0, 0, "P1-0", LIMIT + 1)])
    run.dumps({0: "P1-0"}, start_offset=1)
    result = run_check(run)
    assert flagged(result) == {"delivery-count-out-of-range"}


def test_delivery_count_regression() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.fetch("m1", [(0, 0, "P1-0", 2)])
    run.tick(LOCK_MS)
    run.fetch("m2", [(0, 0, "P1-0", 1)])
    # Archived at the limit of 2: terminal with evidence, so only the regression shows.
    run.dumps({0: "P1-0"}, start_offset=0, states=[[0, 0, "ARCHIVED", 2]])
    result = run_check(run, delivery_limit=2)
    assert flagged(result) == {"delivery-count-regression"}


def _zombie_sample_run(sample_epoch: int, observed_first: bool = True, cut_off: bool = False) -> Run:
    """n1 leads partition 0 at epoch 1 and is deposed (epoch 2 goes to n2); n1
    reports start offset 1 (after the observer saw the change, or just before), and
    n2 delivers offset 0 again after its lock expired."""
    run = Run()
    run.produce(0, "P1-0", 0)
    run.event("sample", {"node": "n1", "partition": 0, "start_offset": 0, "high_watermark": 1, "leader_epoch": 1})
    run.fetch("m1", [(0, 0, "P1-0", 1)], node="n1", epoch=1)
    if cut_off:
        run.event("partition", {"kind": "isolate", "targets": ["n1"], "groups": [["n1"], ["n2", "n3"]]})
    change = {"partition": 0, "old": "n1", "new": "n2", "old_epoch": 1, "epoch": 2}
    if observed_first:
        run.event("leader_change", change)
    run.event(
        "sample", {"node": "n1", "partition": 0, "start_offset": 1, "high_watermark": 1, "leader_epoch": sample_epoch}
    )
    if not observed_first:
        run.event("leader_change", change)
    if cut_off:
        run.event("heal", {"targets": ["n1", "n2", "n3"], "what": "network"})
    run.tick(LOCK_MS)
    run.fetch("m2", [(0, 0, "P1-0", 2)], node="n2", epoch=2)
    run.ack("m2", [(0, 0, "ACCEPT")])
    run.dumps({0: "P1-0"}, start_offset=1)
    return run


def test_a_deposed_leaders_start_offset_is_a_stale_read() -> None:
    result = run_check(_zombie_sample_run(sample_epoch=1))
    assert flagged(result) == set()
    assert result.stats["stale_samples_ignored"] == 1
    # The same start offset from the current leader epoch is authoritative.
    result = run_check(_zombie_sample_run(sample_epoch=2))
    assert flagged(result) == {"delivery-below-start-offset"}


def test_a_cut_off_leaders_start_offset_before_the_observer_saw_the_change_is_stale() -> None:
    # The observer polls: the sample came before it recorded epoch 2, but n1 was isolated.
    result = run_check(_zombie_sample_run(sample_epoch=1, observed_first=False, cut_off=True))
    assert flagged(result) == set()
    assert result.stats["stale_samples_ignored"] == 1
    # Not cut off, and epoch 1 still the newest known: the sample stands.
    result = run_check(_zombie_sample_run(sample_epoch=1, observed_first=False, cut_off=False))
    assert flagged(result) == {"delivery-below-start-offset"}


def _in_flight_accept_run(durable: int | None) -> Run:
    """n1's live start offset passed offset 0 on an ACCEPT whose write was in flight
    (the ack's outcome is unknown); n1 dies, n2 loads the durable state and delivers
    offset 0 again. Safe: the ACCEPT never completed."""
    run = Run()
    run.produce(0, "P1-0", 0)
    run.fetch("m1", [(0, 0, "P1-0", 1)], node="n1", epoch=1)
    run.ack("m1", [(0, 0, "ACCEPT")], outcome="info")
    run.event(
        "sample",
        {"node": "n1", "partition": 0, "start_offset": 1, "durable_start_offset": durable, "leader_epoch": 1},
    )
    run.event("kill", {"targets": ["n1"]})
    run.tick(LOCK_MS)
    run.fetch("m2", [(0, 0, "P1-0", 2)], node="n2", epoch=2)
    run.ack("m2", [(0, 0, "ACCEPT")])
    run.dumps({0: "P1-0"}, start_offset=1)
    return run


def test_start_offset_checks_use_the_durable_start_offset_when_reported() -> None:
    assert flagged(run_check(_in_flight_accept_run(durable=0))) == set()
    # Durable at 1 and delivered again below it: the share state went back.
    assert flagged(run_check(_in_flight_accept_run(durable=1))) == {"delivery-below-start-offset"}
    # Without a durable value, the live one is all there is.
    assert flagged(run_check(_in_flight_accept_run(durable=None))) == {"delivery-below-start-offset"}


def test_start_offset_regression_in_samples() -> None:
    run = clean_run()
    run.sample("n2", 0, 3)
    run.sample("n2", 0, 1)
    result = run_check(run)
    assert flagged(result) == {"start-offset-regression"}
    assert result.anomalies["start-offset-regression"][0]["node"] == "n2"


def test_start_offset_may_move_back_after_an_admin_reset() -> None:
    run = clean_run()
    run.sample("n2", 0, 3)
    run.event("admin_reset", {"partition": 0})
    run.sample("n2", 0, 0)
    run.settle("m3", [(0, 0, "P1-0", 1)])
    assert flagged(run_check(run)) == set()


def test_delivery_below_a_sampled_start_offset() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.produce(0, "P1-1", 1)
    run.fetch("m1", [(0, 0, "P1-0", 1), (0, 1, "P1-1", 1)])
    run.ack("m1", [(0, 0, "ACCEPT"), (0, 1, "RELEASE")])
    run.sample("n1", 0, 2)
    run.settle("m2", [(0, 1, "P1-1", 2)])
    run.dumps({0: "P1-0", 1: "P1-1"}, start_offset=2)
    result = run_check(run)
    assert flagged(result) == {"delivery-below-start-offset"}


def test_delivered_then_truncated() -> None:
    run = Run()
    run.produce(0, "P1-0", outcome="info")
    run.settle("m1", [(0, 0, "P1-0", 1)])
    run.dumps({}, start_offset=0)
    result = run_check(run)
    assert flagged(result) == {"delivered-then-truncated"}


def test_batch_order_within_one_response() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.produce(0, "P1-1", 1)
    run.settle("m1", [(0, 1, "P1-1", 1), (0, 0, "P1-0", 1)])
    run.dumps({0: "P1-0", 1: "P1-1"}, start_offset=2)
    result = run_check(run)
    assert flagged(result) == {"batch-order"}


def test_batch_with_two_lock_deadlines_for_one_partition() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.produce(0, "P1-1", 1)
    run.fetch("m1", [(0, 0, "P1-0", 1), (0, 1, "P1-1", 1)], deadlines=[5000, 6000])
    run.ack("m1", [(0, 0, "ACCEPT"), (0, 1, "ACCEPT")])
    run.dumps({0: "P1-0", 1: "P1-1"}, start_offset=2)
    assert flagged(run_check(run)) == {"batch-order"}


def test_phantom_terminal_state_without_an_accept() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.fetch("m1", [(0, 0, "P1-0", 1)])
    run.ack("m1", [(0, 0, "RELEASE")])
    run.dumps({0: "P1-0"}, start_offset=0, states=[[0, 0, "ACKNOWLEDGED", 1]])
    result = run_check(run)
    assert flagged(result) == {"phantom-terminal"}


def test_stale_ack_accepted_after_another_member_reacquired() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.fetch("m1", [(0, 0, "P1-0", 1)])
    run.tick(LOCK_MS)
    run.fetch("m2", [(0, 0, "P1-0", 2)])
    run.ack("m1", [(0, 0, "ACCEPT")])
    run.ack("m2", [(0, 0, "ACCEPT")])
    run.dumps({0: "P1-0"}, start_offset=1)
    result = run_check(run)
    assert flagged(result) == {"stale-ack-accepted"}
    assert result.anomalies["stale-ack-accepted"][0]["member"] == "m1"


def test_stale_ack_that_fails_is_correct() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.fetch("m1", [(0, 0, "P1-0", 1)])
    run.tick(LOCK_MS)
    run.fetch("m2", [(0, 0, "P1-0", 2)])
    run.ack("m1", [(0, 0, "ACCEPT")], results=["fail:INVALID_RECORD_STATE"])
    run.ack("m2", [(0, 0, "ACCEPT")])
    run.dumps({0: "P1-0"}, start_offset=1)
    result = run_check(run)
    assert flagged(result) == set()
    assert result.stats["coverage_counts"]["failed_acks"] == 1


def test_only_acks_refused_as_stale_count_for_the_failed_acks_gate() -> None:
    # A lost share session refuses the ack too, but says nothing about stale-ack fencing.
    run = Run()
    run.produce(0, "P1-0", 0)
    run.fetch("m1", [(0, 0, "P1-0", 1)])
    run.ack("m1", [(0, 0, "ACCEPT")], results=["fail:SHARE_SESSION_NOT_FOUND"])
    run.tick(LOCK_MS)
    run.settle("m2", [(0, 0, "P1-0", 2)])
    run.dumps({0: "P1-0"}, start_offset=1)
    result = run_check(run, coverage_gates={"failed_acks": 1})
    assert flagged(result) == set()
    assert result.stats["coverage_counts"]["failed_acks"] == 0
    assert result.valid == "invalid"


def test_ack_accepted_for_a_record_never_delivered_to_the_member() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.settle("m1", [(0, 0, "P1-0", 1)])
    run.ack("m9", [(0, 0, "ACCEPT")])
    run.dumps({0: "P1-0"}, start_offset=1)
    assert flagged(run_check(run)) == {"stale-ack-accepted"}


def test_replica_divergence_of_logs_below_the_high_watermark() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.produce(0, "P1-1", 1)
    run.settle("m1", [(0, 0, "P1-0", 1), (0, 1, "P1-1", 1)])
    run.dump("n1", {0: "P1-0", 1: "P1-1"}, 2)
    run.dump("n2", {0: "P1-0", 1: "P1-1"}, 2)
    run.dump("n3", {0: "P1-0"}, 2, high_watermark=2)  # A follower with a hole below its HW.
    result = run_check(run)
    assert flagged(result) == {"replica-divergence"}
    assert result.anomalies["replica-divergence"][0]["offsets"] == [1]


def test_a_follower_behind_its_high_watermark_is_not_divergent() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.produce(0, "P1-1", 1)
    run.settle("m1", [(0, 0, "P1-0", 1), (0, 1, "P1-1", 1)])
    run.dump("n1", {0: "P1-0", 1: "P1-1"}, 2)
    run.dump("n2", {0: "P1-0"}, 2)
    assert flagged(run_check(run)) == set()


def test_replica_divergence_of_share_state() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.produce(0, "P1-1", 1)
    run.settle("m1", [(0, 0, "P1-0", 1), (0, 1, "P1-1", 1)])
    run.dump("n1", {0: "P1-0", 1: "P1-1"}, 2)
    run.dump("n2", {0: "P1-0", 1: "P1-1"}, 0, [[0, 1, "ACKNOWLEDGED", 1]])
    result = run_check(run)
    assert flagged(result) == {"replica-divergence"}
    assert result.anomalies["replica-divergence"][0]["what"] == "share state"


def test_share_states_equal_up_to_in_memory_acquisition() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.produce(0, "P1-1", 1)
    run.settle("m1", [(0, 0, "P1-0", 1)])
    run.dump("n1", {0: "P1-0", 1: "P1-1"}, 1, [[1, 1, "ACQUIRED", 0]])
    run.dump("n2", {0: "P1-0", 1: "P1-1"}, 1, [[1, 1, "AVAILABLE", 0]])
    run.dump("n3", {0: "P1-0", 1: "P1-1"}, 1)
    result = run_check(run)
    # P1-1 was never consumed: only the liveness class, no divergence.
    assert flagged(result) == {"unseen"}


def test_split_brain_two_nodes_serve_one_leader_epoch() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.produce(0, "P1-1", 1)
    run.fetch("m1", [(0, 0, "P1-0", 1)], node="n1", epoch=3)
    run.fetch("m2", [(0, 1, "P1-1", 1)], node="n2", epoch=3)
    run.ack("m1", [(0, 0, "ACCEPT")])
    run.ack("m2", [(0, 1, "ACCEPT")])
    run.dumps({0: "P1-0", 1: "P1-1"}, start_offset=2)
    result = run_check(run)
    assert flagged(result) == {"split-brain"}


def test_no_progress_after_the_last_heal() -> None:
    run = clean_run()
    run.event("partition", {"targets": [["n1"], ["n2", "n3"]]})
    run.event("heal", {"targets": []})
    for sequence in range(3, 9):
        run.tick(2000)
        run.produce(0, f"P1-{sequence}", outcome="info")
    result = run_check(run)
    assert flagged(result) == {"no-progress-after-heal"}
    assert result.anomalies["no-progress-after-heal"][0]["kind"] == "produce"


def test_progress_after_heal_cannot_be_judged_if_the_history_ends_early() -> None:
    run = clean_run()
    run.event("heal", {"targets": []})
    run.produce(0, "P1-3", outcome="info")
    result = run_check(run)
    assert flagged(result) == set()
    assert result.valid == "unknown"


# ---- ambiguity, verdicts and coverage -----------------------------------------------


def test_ambiguous_outcomes_are_not_flagged() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.produce(0, "P1-1", outcome="info")  # Happened: it is read below.
    run.produce(0, "P1-2", outcome="info")  # Never happened.
    run.produce(0, "P1-3", outcome=None)  # The harness never saw an answer.
    run.produce(0, "P2-0", outcome="info")  # Retried without idempotence: appended twice.
    run.produce(0, "P2-0", 3)
    run.fetch("m1", [(0, 0, "P1-0", 1), (0, 1, "P1-1", 1)])
    # An ACCEPT whose outcome is unknown allows redelivery.
    run.ack("m1", [(0, 0, "ACCEPT"), (0, 1, "ACCEPT")], outcome="info")
    # A definitely failed REJECT allows redelivery too.
    run.tick(LOCK_MS)
    run.fetch("m2", [(0, 0, "P1-0", 2), (0, 2, "P2-0", 1), (0, 3, "P2-0", 1)])
    run.ack("m2", [(0, 0, "REJECT")], outcome="fail")
    run.ack("m2", [(0, 0, "ACCEPT"), (0, 2, "ACCEPT"), (0, 3, "ACCEPT")])
    # A fetch with an unknown outcome: nothing is known to have been acquired.
    run.fetch("m3", [], outcome="info")
    # Offset 1 is terminal through the info ACCEPT alone, which is enough evidence.
    run.dumps({0: "P1-0", 1: "P1-1", 2: "P2-0", 3: "P2-0"}, start_offset=4)
    result = run_check(run)
    assert flagged(result) == set()
    assert result.valid is True
    assert result.stats["retried_duplicates"] == 1
    assert result.stats["recovered"] == 1  # P1-1; P2-0 was acked on its retry.


def test_a_record_missing_from_ack_results_has_an_unknown_outcome() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.produce(0, "P1-1", 1)
    run.fetch("m1", [(0, 0, "P1-0", 1), (0, 1, "P1-1", 1)])
    run._append("m1", "invoke", "ack", {"member": "m1", "acks": [[0, 0, "ACCEPT"], [0, 1, "ACCEPT"]]})
    run._append("m1", "ok", "ack", {"results": [[0, 0, "ok"]]}, "n1")
    run.tick(LOCK_MS)
    run.settle("m2", [(0, 1, "P1-1", 2)])
    run.dumps({0: "P1-0", 1: "P1-1"}, start_offset=2)
    assert flagged(run_check(run)) == set()
    # Had the broker answered ok for offset 1 too, the redelivery would be a resurrection.
    run.ops[7] = Op(7, "m1", "ok", "ack", {"results": [[0, 0, "ok"], [0, 1, "ok"]]}, run.ops[7].time_ns, "n1")
    assert flagged(run_check(run)) == {"resurrection"}


def test_archive_explained_by_fetches_with_unknown_outcome() -> None:
    run = Run()
    run.produce(0, "P1-0", 0)
    run.fetch("m1", [(0, 0, "P1-0", 1)])
    for member in ("m2", "m3", "m4"):
        run.tick(LOCK_MS)
        run.fetch(member, [], outcome="info")
    run.dumps({0: "P1-0"}, start_offset=0, states=[[0, 0, "ARCHIVED", LIMIT]])
    assert flagged(run_check(run)) == set()
    # With one unknown fetch fewer the limit could not have been reached.
    run.ops = run.ops[:8] + [op for op in run.ops[8:] if op.f == "final_dump"]
    assert flagged(run_check(run)) == {"phantom-terminal"}


def test_history_without_final_dumps_is_unknown() -> None:
    run = clean_run()
    run.ops = [op for op in run.ops if op.f != "final_dump"]
    result = run_check(run)
    assert result.valid == "unknown"
    assert any("final_dump" in note for note in result.notes)


def test_coverage_gates_make_a_thin_run_invalid() -> None:
    run = clean_run()
    assert run_check(run, coverage_gates={"faults": 1, "leader_changes": 1, "redeliveries": 1}).valid is True
    result = run_check(run, coverage_gates={"faults": 8, "acked_produces": 3})
    assert result.valid == "invalid"
    assert result.coverage["faults"] == {"required": 8, "observed": 1, "met": False}
    assert result.coverage["acked_produces"]["met"] is True
    assert run_check(run, coverage_gates={"delivery_limit_archives": 1}).valid == "invalid"
    with pytest.raises(ValueError, match="unknown coverage gates"):
        run_check(run, coverage_gates={"leader_change": 1})


def test_a_violation_outranks_low_coverage() -> None:
    result = run_check(lost_run(1), coverage_gates={"faults": 8})
    assert result.valid is False


def test_every_class_has_a_test_above() -> None:
    tested = {
        "lost-prefix", "lost-middle", "lost-postfix", "unseen", "unexpected", "aborted-read",
        "inconsistent-offsets", "duplicate-append", "offset-regression", "resurrection",
        "double-grant", "lock-overlap-suspect", "delivery-count-out-of-range",
        "delivery-count-regression", "start-offset-regression", "delivery-below-start-offset",
        "delivered-then-truncated", "batch-order", "phantom-terminal", "stale-ack-accepted",
        "replica-divergence", "split-brain", "no-progress-after-heal",
    }  # fmt: skip
    assert tested == set(ANOMALY_CLASSES)


# ---- the recorder, the file format, the report and the command line -----------------


def test_recorder_is_thread_safe_and_pairs_back(tmp_path) -> None:
    path = tmp_path / "history.jsonl"
    with HistoryRecorder(path) as recorder:

        def producer(number: int) -> None:
            for sequence in range(50):
                handle = recorder.invoke(f"P{number}", "produce", {"partition": 0, "value": f"P{number}-{sequence}"})
                if sequence % 2:
                    handle.ok({"partition": 0, "offset": sequence, "value": f"P{number}-{sequence}"}, node="n1")
                else:
                    handle.info("timeout")

        threads = [threading.Thread(target=producer, args=(number,)) for number in range(4)]
        for thread in threads:
            thread.start()
        recorder.event("kill", {"targets": ["n1"]})
        for thread in threads:
            thread.join()
    history = load_history(path)
    assert [op.index for op in history] == list(range(401))
    assert all(a.time_ns <= b.time_ns for a, b in zip(history, history[1:]))
    operations, events = pair_operations(history)
    assert len(operations) == 200 and [event.f for event in events] == ["kill"]
    assert all(operation.completion.process == operation.invoke.process for operation in operations)


def test_recorder_refuses_double_completion_and_overwrite(tmp_path) -> None:
    path = tmp_path / "history.jsonl"
    with HistoryRecorder(path) as recorder:
        handle = recorder.invoke("m1", "ack", {"member": "m1", "acks": []})
        handle.fail("INVALID_RECORD_STATE")
        with pytest.raises(RuntimeError, match="completed twice"):
            handle.ok()
    with pytest.raises(FileExistsError):
        HistoryRecorder(path)
    assert load_history(path)[1].value == {"error": "INVALID_RECORD_STATE"}


def test_events_cannot_use_client_operation_names(tmp_path) -> None:
    with HistoryRecorder(tmp_path / "history.jsonl") as recorder:
        with pytest.raises(ValueError, match="client operation"):
            recorder.event("produce", {})


def test_load_history_drops_only_a_torn_last_line(tmp_path) -> None:
    path = tmp_path / "history.jsonl"
    write_history(path, clean_run().ops)
    whole = path.read_text()
    path.write_text(whole + '{"index": 99, "proc')
    assert len(load_history(path)) == len(clean_run().ops)
    path.write_text('{"index": 0, "proc\n' + whole)
    with pytest.raises(HistoryFormatError, match="not JSON"):
        load_history(path)


def test_completion_without_invoke_is_a_format_error() -> None:
    with pytest.raises(HistoryFormatError, match="has no invoke"):
        pair_operations([Op(0, "P1", "ok", "produce", {}, 0)])


def test_report_has_counts_and_slices(tmp_path) -> None:
    run = lost_run(1)
    result = run_check(run, coverage_gates={"faults": 1})
    write_report(result, run.ops, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert report["verdict"] == "FAIL"
    (evidence,) = report["anomalies"]["lost-middle"]
    assert [op["index"] for op in evidence["slice"]] == evidence["ops"]
    assert evidence["slice"][0]["value"] == {"partition": 0, "value": "P1-1"}
    assert "lost-middle: 1" in summary and "faults: 0 (required 1) NOT MET" in summary
    assert '"value": "P1-1"' in summary
    assert report["throughput"][0]["produced"] == 3
    dump = evidence["slice"][-1]["value"]
    assert dump["abridged"] is True and list(dump["partitions"]) == ["0"]


def test_report_abridges_slices_to_the_evidence(tmp_path) -> None:
    run = Run()
    for offset in range(20):
        run.produce(0, f"P1-{offset}", offset)
    run.fetch("m1", [(0, offset, f"P1-{offset}", 1) for offset in range(20)])
    run.ack("m1", [(0, offset, "RELEASE" if offset == 7 else "ACCEPT") for offset in range(20)])
    run.tick(LOCK_MS)
    run.settle("m2", [(0, 7, "P1-7", 1)])
    run.dumps({offset: f"P1-{offset}" for offset in range(20)}, start_offset=20)
    result = run_check(run)
    assert flagged(result) == {"double-grant"}
    write_report(result, run.ops, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    (evidence,) = report["anomalies"]["double-grant"]
    first_fetch = next(op for op in evidence["slice"] if op["f"] == "share_fetch" and op["type"] == "ok")
    assert first_fetch["value"]["abridged"] is True
    assert [record["offset"] for record in first_fetch["value"]["records"]] == [7]


def test_command_line(tmp_path, capsys) -> None:
    clean = tmp_path / "clean.jsonl"
    broken = tmp_path / "broken.jsonl"
    write_history(clean, clean_run().ops)
    write_history(broken, lost_run(1).ops)
    assert main([str(clean), "--no-gates", "--delivery-limit", "4"]) == 0
    assert main([str(clean), "--gate", "faults=5"]) == 2
    assert main([str(broken), "--no-gates", "--out", str(tmp_path / "out")]) == 1
    assert "verdict: FAIL" in capsys.readouterr().out
    assert (tmp_path / "out" / "summary.txt").exists()
