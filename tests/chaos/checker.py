"""The chaos checker: reads a recorded history and says exactly what went wrong.

Rules (reliability-plan sections 2 and 3; the history format is in `history.py`)
------------------------------------------------------------------------------
The checker is pure: `check(history, ...)` takes the list of ops and returns a
`CheckResult`; it reads no clock and no file. Each anomaly class maps to one
invariant; each piece of evidence names the minimal slice of history ops (their
indices, in `"ops"`) that shows it.

Ambiguity follows Jepsen. "ok" happened, "fail" definitely did not, "info" (or
no completion) may or may not have happened. "A before B" is only claimed when A
*completed* before B was *invoked*; so a redelivery counts as "after" an ACCEPT
only if its fetch was invoked after the ACCEPT completed.

| anomaly class                  | inv. | shown by                                                    |
|--------------------------------|------|-------------------------------------------------------------|
| lost-prefix / -middle / -postfix | I1 | an ok produce never read by anyone and absent from every final log; split per producer by its sequence number around the values of that producer that were seen (read, or in a final log). Without final dumps only lost-middle is definite; the others make the verdict "unknown". |
| unseen                         | L1  | a produce that must have committed (ok, or info but seen), present in the final log, and not terminal (ACKNOWLEDGED, ARCHIVED or below the start offset) on any node with share state. Liveness: the drain did not finish. |
| unexpected                     | I2  | a value read or in a final log that no produce ever invoked. |
| aborted-read                   | I2  | a value read or in a final log whose every produce attempt definitely failed (G1a). |
| inconsistent-offsets           | I3  | two values at one (partition, offset) across produce acks, fetches, consumes and every final log. |
| duplicate-append               | I3  | one value at two offsets, although it was produced only once (values invoked twice are non-idempotent retries; they are counted in stats instead). |
| offset-regression              | I4  | produce B invoked after produce A completed, on one partition, got an offset not above A's. |
| resurrection                   | I5  | a fetch invoked after an ACCEPT/REJECT of the record completed ok returned the record again, or the record ends non-terminal. |
| double-grant                   | I6  | one delivery count of one record delivered by two fetches. |
| lock-overlap-suspect (warning) | I6  | of two deliveries of a record, the one with the higher delivery count (the later grant, whatever the fetch invoke order) certainly completed before the lower count's lock could have expired (`fetch2.complete < fetch1.invoke + lock_duration - slack`), with no ack, leave, crash, nemesis event or leader change of the holder or partition in between. A warning only: mutual exclusion is a broker-side property that needs the broker trace to prove. |
| delivery-count-out-of-range    | I7  | a delivery count below 1 or above the delivery limit. |
| delivery-count-regression      | I7  | a delivery certainly after another carries a lower delivery count. |
| start-offset-regression        | I8  | one node's sampled share-partition start offset (the durable one when reported) moved backwards. |
| delivery-below-start-offset    | I8  | a fetch invoked after a sample saw start offset S returned an offset below S. Both I8 checks skip samples from a deposed leader (leader epoch below one the observer had already recorded, or superseded later while the node was partitioned or paused): a stale read, not the start offset. |
| delivered-then-truncated       | I9  | a read value that is in no final log, and whose offset is a hole or past the end of every final log that covers its partition. |
| batch-order                    | I10 | offsets of one partition within one response are not strictly increasing, or one share-fetch response carries two lock deadlines for one partition. |
| phantom-terminal               | I11 | a record terminal at the end with no evidence: ACKNOWLEDGED needs an ACCEPT invoked (not definitely failed) by a member that was delivered the record; ARCHIVED needs such a REJECT, or the delivery limit reachable (highest delivery count seen + fetches with unknown outcome >= limit); below the start offset needs either. |
| stale-ack-accepted             | I11 | an ack returned ok for a record its member was never delivered, or after another member certainly re-acquired the record with a higher delivery count. |
| replica-divergence             | I12 | final logs differ below the lowest high watermark, or share states (start offset, per-offset state and delivery count, ACQUIRED counted as AVAILABLE because acquisition is in memory only, KIP-932) differ between nodes. |
| split-brain                    | I12 | two nodes served deliveries of one partition with one leader epoch. |
| no-progress-after-heal         | L1  | after the last heal/resume/restart, no produce, or no read while acked data was waiting, completed within `progress_window_ms`. |

Every check that spans time skips pairs separated by an `admin_reset` event of
the partition: a reset legitimately moves the start offset and redelivers.

Verdict: `False` if any class other than a warning has evidence; otherwise
`"unknown"` if something could not be decided (no final dump, the history ended
inside the progress window); otherwise `"invalid"` if a coverage gate was not
met; otherwise `True`.

Theory of operation
-------------------
`_Analysis.__init__` pairs invokes with completions and builds indexes once:
produce attempts by value, deliveries and acks by (partition, offset), the
version order (values seen at each offset), and the final dumps. Each
`_check_*` method then reads those indexes and returns evidence; none mutates
them. The whole run is O(n log n) in the history length plus, per record, the
square of its number of deliveries (bounded by the delivery limit unless the
broker is already broken).
"""

from __future__ import annotations

import argparse
import bisect
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.chaos.history import (
    FAULT_EVENTS,
    NEMESIS_EVENTS,
    RECOVERY_EVENTS,
    INCOMPLETE_NS,
    HistoryFormatError,
    Op,
    Operation,
    load_history,
    pair_operations,
)

ANOMALY_CLASSES: tuple[str, ...] = (
    "lost-prefix",
    "lost-middle",
    "lost-postfix",
    "unseen",
    "unexpected",
    "aborted-read",
    "inconsistent-offsets",
    "duplicate-append",
    "offset-regression",
    "resurrection",
    "double-grant",
    "lock-overlap-suspect",
    "delivery-count-out-of-range",
    "delivery-count-regression",
    "start-offset-regression",
    "delivery-below-start-offset",
    "delivered-then-truncated",
    "batch-order",
    "phantom-terminal",
    "stale-ack-accepted",
    "replica-divergence",
    "split-brain",
    "no-progress-after-heal",
)
# Reported, but they do not fail a run on their own (see the table above).
WARNING_CLASSES = frozenset({"lock-overlap-suspect"})

# Section 6.4 of the reliability plan. A run that misses one is "invalid", not passed.
# redeliveries: deliveries with a count above 1; delivery_limit_archives: records
# delivered at the limit and never settled; failed_acks: acks refused with
# INVALID_RECORD_STATE (stale: the lock had expired or the record moved on).
DEFAULT_COVERAGE_GATES: Mapping[str, int] = {
    "faults": 8,
    "leader_changes": 2,
    "coordinator_moves": 1,
    "acked_produces": 3000,
    "redeliveries": 100,
    "delivery_limit_archives": 10,
    "failed_acks": 20,
}

TERMINAL_STATES = frozenset({"ACKNOWLEDGED", "ARCHIVED"})
SHARE_STATES = frozenset({"AVAILABLE", "ACQUIRED", "ACKNOWLEDGED", "ARCHIVED"})
BELOW_START = "BELOW_START_OFFSET"
_VALUE_SEQUENCE = re.compile(r"-(\d+)$")
_NS_PER_MS = 1_000_000
# A cap on the indices one piece of evidence lists, so one broken record cannot
# make a report of millions of lines; the first ones are enough to replay it.
_EVIDENCE_OPS_MAX = 12


@dataclass(slots=True)
class CheckResult:
    valid: bool | str
    anomalies: dict[str, list[dict[str, Any]]]
    stats: dict[str, Any]
    coverage: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    @property
    def failing_classes(self) -> list[str]:
        return [name for name, found in self.anomalies.items() if found and name not in WARNING_CLASSES]

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "anomalies": self.anomalies,
            "stats": self.stats,
            "coverage": self.coverage,
            "notes": self.notes,
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    """One record in one ok share_fetch response."""

    partition: Any
    offset: int
    value: Any
    delivery_count: int
    member: Any
    lock_deadline_ms: int | None
    leader_epoch: int | None
    fetch: Operation


@dataclass(frozen=True, slots=True)
class Consumed:
    """One record in one ok consume (classic consumer group) response."""

    partition: Any
    offset: int
    value: Any
    poll: Operation


@dataclass(frozen=True, slots=True)
class AckRecord:
    """One (partition, offset) of one ack request, with its own outcome."""

    partition: Any
    offset: int
    kind: str
    outcome: str  # "ok", "fail" (definitely not applied) or "info"
    member: Any
    operation: Operation
    # The broker's error code name of a "fail" ("fail:<CODE>" in the history), else None.
    error: str | None = None


@dataclass(slots=True)
class FinalPartition:
    node: Any
    dump: Op
    log: dict[int, Any]
    high_watermark: int | None
    start_offset: int | None
    runs: list[tuple[int, int, str, int]]
    run_firsts: list[int]

    @property
    def has_share_state(self) -> bool:
        return self.start_offset is not None

    @property
    def first_log_offset(self) -> int:
        # With an empty log, everything below the high watermark went by retention.
        if self.log:
            return min(self.log)
        return self.high_watermark or 0

    def state_at(self, offset: int) -> tuple[str, int | None]:
        assert self.start_offset is not None
        if offset < self.start_offset:
            return BELOW_START, None
        position = bisect.bisect_right(self.run_firsts, offset) - 1
        if position >= 0:
            first, last, state, delivery_count = self.runs[position]
            if first <= offset <= last:
                return state, delivery_count
        # Past the in-flight window: never acquired yet.
        return "AVAILABLE", 0

    def is_terminal(self, offset: int) -> bool:
        state, _ = self.state_at(offset)
        return state == BELOW_START or state in TERMINAL_STATES


def _partition(raw: Any) -> Any:
    # JSON object keys are strings; partitions recorded as numbers must match them.
    if isinstance(raw, str) and raw.isdigit():
        return int(raw)
    return raw


def _evidence(ops: Iterable[int], **fields: Any) -> dict[str, Any]:
    indices = sorted(set(ops))
    if len(indices) > _EVIDENCE_OPS_MAX:
        fields["ops_omitted"] = len(indices) - _EVIDENCE_OPS_MAX
        indices = indices[:_EVIDENCE_OPS_MAX]
    return {"ops": indices, **fields}


def _sequence_key(value: Any, fallback: int) -> tuple[int, int]:
    match = _VALUE_SEQUENCE.search(value) if isinstance(value, str) else None
    return (int(match.group(1)), fallback) if match else (fallback, fallback)


class _Analysis:
    def __init__(
        self,
        history: Sequence[Op],
        *,
        delivery_limit: int,
        lock_duration_ms: int,
        lock_slack_ms: int,
        progress_window_ms: int,
    ) -> None:
        self.history = history
        self.delivery_limit = delivery_limit
        self.lock_duration_ns = lock_duration_ms * _NS_PER_MS
        self.lock_slack_ns = lock_slack_ms * _NS_PER_MS
        self.progress_window_ns = progress_window_ms * _NS_PER_MS
        self.notes: list[str] = []
        self.stats: dict[str, Any] = {}

        self.operations, self.events = pair_operations(history)
        self.by_f: dict[str, list[Operation]] = defaultdict(list)
        for operation in self.operations:
            self.by_f[operation.f].append(operation)

        # Produces: every attempt per value, and the ok ones with their offset.
        self.attempts: dict[Any, list[Operation]] = defaultdict(list)
        self.acked: dict[Any, tuple[Any, int, Operation]] = {}
        for operation in self.by_f["produce"]:
            value = operation.invoke.value["value"]
            self.attempts[value].append(operation)
            if operation.type == "ok":
                done = operation.completion.value
                self.acked[value] = (_partition(done["partition"]), int(done["offset"]), operation)

        # Reads.
        self.deliveries: list[Delivery] = []
        self.ambiguous_fetch_invokes_ns: list[int] = []
        for operation in self.by_f["share_fetch"]:
            if operation.type != "ok":
                if operation.type == "info":
                    self.ambiguous_fetch_invokes_ns.append(operation.invoke_ns)
                continue
            for record in operation.completion.value.get("records", []):
                self.deliveries.append(
                    Delivery(
                        partition=_partition(record["partition"]),
                        offset=int(record["offset"]),
                        value=record["value"],
                        delivery_count=int(record["delivery_count"]),
                        member=record.get("member", operation.invoke.value.get("member")),
                        lock_deadline_ms=record.get("lock_deadline_ms"),
                        leader_epoch=record.get("leader_epoch"),
                        fetch=operation,
                    )
                )
        self.ambiguous_fetch_invokes_ns.sort()
        self.consumed: list[Consumed] = []
        for operation in self.by_f["consume"]:
            if operation.type == "ok":
                for record in operation.completion.value.get("records", []):
                    self.consumed.append(
                        Consumed(
                            _partition(record["partition"]), int(record["offset"]), record["value"], operation
                        )
                    )
        self.deliveries_by_record: dict[tuple[Any, int], list[Delivery]] = defaultdict(list)
        for delivery in self.deliveries:
            self.deliveries_by_record[(delivery.partition, delivery.offset)].append(delivery)
        for found in self.deliveries_by_record.values():
            found.sort(key=lambda delivery: delivery.fetch.invoke_ns)
        # The first op that read each value (delivery or consume), for evidence and progress.
        self.first_read: dict[Any, tuple[int, Operation]] = {}
        for operation, value in [(d.fetch, d.value) for d in self.deliveries] + [
            (c.poll, c.value) for c in self.consumed
        ]:
            known = self.first_read.get(value)
            if known is None or operation.complete_ns < known[0]:
                self.first_read[value] = (operation.complete_ns, operation)

        # Acks, one record per (partition, offset) per request.
        self.acks: list[AckRecord] = []
        for operation in self.by_f["ack"]:
            member = operation.invoke.value.get("member")
            # An ok without per-record results applied every record; with results, a
            # record the broker did not answer for has an unknown outcome.
            outcomes: dict[tuple[Any, int], str] | None = None
            if operation.type == "ok" and (operation.completion.value or {}).get("results") is not None:
                outcomes = {
                    (_partition(partition), int(offset)): result
                    for partition, offset, result in operation.completion.value["results"]
                }
            for partition, offset, kind in operation.invoke.value["acks"]:
                key = (_partition(partition), int(offset))
                if operation.type != "ok":
                    outcome = operation.type
                elif outcomes is None:
                    outcome = "ok"
                else:
                    outcome = outcomes.get(key, "info")
                error = None
                if outcome != "ok" and outcome != "info" and outcomes is not None:
                    error = outcome.partition(":")[2] or None
                    outcome = "fail"
                self.acks.append(AckRecord(key[0], key[1], kind, outcome, member, operation, error))
        self.acks_by_record: dict[tuple[Any, int], list[AckRecord]] = defaultdict(list)
        for ack in self.acks:
            self.acks_by_record[(ack.partition, ack.offset)].append(ack)

        # Events.
        self.resets: dict[Any, list[int]] = defaultdict(list)  # partition (None = all) -> times
        self.member_exits: dict[Any, list[Op]] = defaultdict(list)
        self.disruptions: list[Op] = []  # nemesis events, in time order
        self.partition_moves: dict[Any, list[Op]] = defaultdict(list)
        self.samples: list[Op] = []
        self.final: dict[Any, dict[Any, FinalPartition]] = {}
        for event in self.events:
            value = event.value if isinstance(event.value, dict) else {}
            if event.f == "admin_reset":
                self.resets[_partition(value.get("partition"))].append(event.time_ns)
            if event.f in NEMESIS_EVENTS:
                self.disruptions.append(event)
            elif event.f in ("leave", "crash"):
                self.member_exits[value.get("member")].append(event)
            elif event.f in ("leader_change", "coordinator_move"):
                self.partition_moves[_partition(value.get("partition"))].append(event)
            elif event.f == "sample":
                self.samples.append(event)
            elif event.f == "final_dump":
                self.final[value["node"]] = self._load_dump(event)
        self.disruption_times_ns = [event.time_ns for event in self.disruptions]

        # Final logs: which value sits where, and which partitions some dump covers.
        self.final_positions: dict[Any, set[tuple[Any, int]]] = defaultdict(set)
        self.final_by_partition: dict[Any, list[FinalPartition]] = defaultdict(list)
        for partitions in self.final.values():
            for partition, final in partitions.items():
                self.final_by_partition[partition].append(final)
                for offset, value in final.log.items():
                    self.final_positions[value].add((partition, offset))

    # ---- helpers -------------------------------------------------------------------

    @staticmethod
    def _load_dump(event: Op) -> dict[Any, FinalPartition]:
        loaded: dict[Any, FinalPartition] = {}
        node = event.value["node"]
        for raw_partition, raw in event.value.get("partitions", {}).items():
            runs = sorted(
                (int(first), int(last), str(state), int(count))
                for first, last, state, count in (raw.get("states") or [])
            )
            for run in runs:
                if run[2] not in SHARE_STATES:
                    raise HistoryFormatError(f"op {event.index}: unknown share state {run[2]!r}")
            start_offset = raw.get("start_offset")
            loaded[_partition(raw_partition)] = FinalPartition(
                node=node,
                dump=event,
                log={int(offset): value for offset, value in raw.get("log", [])},
                high_watermark=raw.get("high_watermark"),
                start_offset=None if start_offset is None else int(start_offset),
                runs=runs,
                run_firsts=[run[0] for run in runs],
            )
        return loaded

    def reset_between(self, partition: Any, start_ns: int, end_ns: int) -> bool:
        for key in (partition, None):
            times = self.resets.get(key, [])
            position = bisect.bisect_right(times, start_ns)
            if position < len(times) and times[position] < end_ns:
                return True
        return False

    def disrupted_between(self, partition: Any, start_ns: int, end_ns: int) -> bool:
        position = bisect.bisect_right(self.disruption_times_ns, start_ns)
        if position < len(self.disruption_times_ns) and self.disruption_times_ns[position] < end_ns:
            return True
        return any(start_ns < move.time_ns < end_ns for move in self.partition_moves.get(partition, []))

    def seen(self, value: Any) -> bool:
        return value in self.first_read or value in self.final_positions

    def must_have_committed(self, value: Any) -> bool:
        return value in self.acked or (value in self.attempts and self.seen(value))

    def read_ops(self, value: Any) -> list[int]:
        first = self.first_read.get(value)
        return first[1].indices if first else []

    # ---- I1 and liveness --------------------------------------------------------------

    def check_lost(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = defaultdict(list)
        have_dumps = bool(self.final)
        by_producer: dict[Any, list[tuple[tuple[int, int], Any, Operation]]] = defaultdict(list)
        for value, attempts in self.attempts.items():
            first = attempts[0]
            by_producer[first.invoke.process].append((_sequence_key(value, first.invoke.index), value, first))
        unconfirmed = 0
        for producer, produced in by_producer.items():
            produced.sort(key=lambda item: item[0])
            seen_keys = [key for key, value, _ in produced if self.seen(value)]
            first_seen = seen_keys[0] if seen_keys else None
            last_seen = seen_keys[-1] if seen_keys else None
            for key, value, _ in produced:
                if value not in self.acked or value in self.first_read:
                    continue
                partition, offset, operation = self.acked[value]
                if have_dumps and partition in self.final_by_partition:
                    if value in self.final_positions:
                        continue
                    definite = True
                else:
                    definite = False
                if first_seen is not None and first_seen < key < last_seen:
                    name, definite = "lost-middle", True
                elif first_seen is not None and key < first_seen:
                    name = "lost-prefix"
                else:
                    name = "lost-postfix"
                if not definite:
                    unconfirmed += 1
                    continue
                neighbours = [
                    index
                    for neighbour_key, neighbour, _ in produced
                    if neighbour_key in (first_seen, last_seen)
                    for index in self.read_ops(neighbour)
                ]
                dumps = [final.dump.index for final in self.final_by_partition.get(partition, [])]
                found[name].append(
                    _evidence(
                        operation.indices + neighbours + dumps,
                        value=value,
                        producer=producer,
                        partition=partition,
                        offset=offset,
                        sequence=key[0],
                        first_seen_sequence=first_seen[0] if first_seen else None,
                        last_seen_sequence=last_seen[0] if last_seen else None,
                    )
                )
        self.stats["unconfirmed_lost"] = unconfirmed
        if unconfirmed:
            self.notes.append(
                f"{unconfirmed} acked produces were never read and no final dump covers them: "
                "loss cannot be told from a slow reader"
            )
        return found

    def check_unseen(self) -> list[dict[str, Any]]:
        found = []
        for value, positions in self.final_positions.items():
            if not self.must_have_committed(value):
                continue
            for partition, offset in sorted(positions, key=repr):
                share_finals = [
                    final for final in self.final_by_partition[partition] if final.has_share_state
                ]
                if not share_finals or any(final.is_terminal(offset) for final in share_finals):
                    continue
                writer = self.acked.get(value, (None, None, self.attempts[value][0]))[2]
                found.append(
                    _evidence(
                        writer.indices + [final.dump.index for final in share_finals],
                        value=value,
                        partition=partition,
                        offset=offset,
                        final_states={str(final.node): final.state_at(offset)[0] for final in share_finals},
                    )
                )
        return found

    # ---- I2, I3 -----------------------------------------------------------------------

    def _observations(self) -> Iterable[tuple[Any, int, Any, list[int], str]]:
        for value, (partition, offset, operation) in self.acked.items():
            yield partition, offset, value, operation.indices, "produce"
        for delivery in self.deliveries:
            yield delivery.partition, delivery.offset, delivery.value, delivery.fetch.indices, "share_fetch"
        for record in self.consumed:
            yield record.partition, record.offset, record.value, record.poll.indices, "consume"
        for node, partitions in self.final.items():
            for partition, final in partitions.items():
                for offset, value in final.log.items():
                    yield partition, offset, value, [final.dump.index], f"final_dump:{node}"

    def check_values(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = defaultdict(list)
        reported: set[Any] = set()
        for partition, offset, value, ops, source in self._observations():
            if source == "produce" or value in reported:
                continue
            attempts = self.attempts.get(value)
            if not attempts:
                reported.add(value)
                found["unexpected"].append(
                    _evidence(ops, value=value, partition=partition, offset=offset, source=source)
                )
            elif all(attempt.type == "fail" for attempt in attempts):
                reported.add(value)
                writers = [index for attempt in attempts for index in attempt.indices]
                found["aborted-read"].append(
                    _evidence(ops + writers, value=value, partition=partition, offset=offset, source=source)
                )
        return found

    def check_offsets(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = defaultdict(list)
        at_offset: dict[tuple[Any, int], dict[Any, tuple[list[int], set[str]]]] = defaultdict(dict)
        offsets_of: dict[Any, dict[tuple[Any, int], list[int]]] = defaultdict(dict)
        for partition, offset, value, ops, source in self._observations():
            ops_and_sources = at_offset[(partition, offset)].setdefault(value, (ops, set()))
            ops_and_sources[1].add(source)
            offsets_of[value].setdefault((partition, offset), ops)
        for (partition, offset), values in at_offset.items():
            if len(values) > 1:
                found["inconsistent-offsets"].append(
                    _evidence(
                        [index for ops, _ in values.values() for index in ops],
                        partition=partition,
                        offset=offset,
                        values={str(value): sorted(sources) for value, (_, sources) in values.items()},
                    )
                )
        retried = 0
        for value, positions in offsets_of.items():
            if len(positions) < 2:
                continue
            if len(self.attempts.get(value, [])) > 1:
                # A non-idempotent retry may append twice; reported, not a violation.
                retried += 1
                continue
            found["duplicate-append"].append(
                _evidence(
                    [index for ops in positions.values() for index in ops],
                    value=value,
                    positions=sorted([list(position) for position in positions], key=repr),
                )
            )
        self.stats["retried_duplicates"] = retried
        return found

    # ---- I4 ---------------------------------------------------------------------------

    def check_offset_regression(self) -> list[dict[str, Any]]:
        found = []
        by_partition: dict[Any, list[tuple[int, Operation]]] = defaultdict(list)
        for partition, offset, operation in self.acked.values():
            by_partition[partition].append((offset, operation))
        for partition, produced in by_partition.items():
            by_completion = sorted(produced, key=lambda item: item[1].complete_ns)
            by_invoke = sorted(produced, key=lambda item: item[1].invoke_ns)
            known = 0
            highest: tuple[int, Operation] | None = None
            for offset, operation in by_invoke:
                # Every produce that completed before this one was invoked is known to precede it.
                while known < len(by_completion) and by_completion[known][1].complete_ns < operation.invoke_ns:
                    if highest is None or by_completion[known][0] > highest[0]:
                        highest = by_completion[known]
                    known += 1
                if highest is not None and offset <= highest[0]:
                    found.append(
                        _evidence(
                            highest[1].indices + operation.indices,
                            partition=partition,
                            earlier_offset=highest[0],
                            later_offset=offset,
                        )
                    )
        return found

    # ---- I5 ---------------------------------------------------------------------------

    def check_resurrection(self) -> list[dict[str, Any]]:
        found = []
        for (partition, offset), acks in self.acks_by_record.items():
            settled = [ack for ack in acks if ack.outcome == "ok" and ack.kind in ("ACCEPT", "REJECT")]
            if not settled:
                continue
            first = min(settled, key=lambda ack: ack.operation.complete_ns)
            settled_ns = first.operation.complete_ns
            for delivery in self.deliveries_by_record.get((partition, offset), []):
                if delivery.fetch.invoke_ns > settled_ns and not self.reset_between(
                    partition, settled_ns, delivery.fetch.invoke_ns
                ):
                    found.append(
                        _evidence(
                            first.operation.indices + delivery.fetch.indices,
                            partition=partition,
                            offset=offset,
                            ack=first.kind,
                            redelivered_to=delivery.member,
                            delivery_count=delivery.delivery_count,
                            via="fetch",
                        )
                    )
            if self.reset_between(partition, settled_ns, 2**63 - 1):
                continue
            for final in self.final_by_partition.get(partition, []):
                if final.has_share_state and offset in final.log and not final.is_terminal(offset):
                    found.append(
                        _evidence(
                            first.operation.indices + [final.dump.index],
                            partition=partition,
                            offset=offset,
                            ack=first.kind,
                            node=final.node,
                            final_state=final.state_at(offset)[0],
                            via="final_dump",
                        )
                    )
        return found

    # ---- I6, I7 -----------------------------------------------------------------------

    def check_grants(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for (partition, offset), deliveries in self.deliveries_by_record.items():
            for delivery in deliveries:
                if not 1 <= delivery.delivery_count <= self.delivery_limit:
                    found["delivery-count-out-of-range"].append(
                        _evidence(
                            delivery.fetch.indices,
                            partition=partition,
                            offset=offset,
                            delivery_count=delivery.delivery_count,
                            delivery_limit=self.delivery_limit,
                        )
                    )
            for position, first in enumerate(deliveries):
                for second in deliveries[position + 1 :]:
                    if first.fetch is second.fetch:
                        continue  # Repeats inside one response are batch-order anomalies.
                    earlier_ns = min(first.fetch.invoke_ns, second.fetch.invoke_ns)
                    later_ns = max(first.fetch.complete_ns, second.fetch.complete_ns)
                    if self.reset_between(partition, earlier_ns, later_ns):
                        continue
                    pair_fields = dict(
                        partition=partition,
                        offset=offset,
                        delivery_counts=[first.delivery_count, second.delivery_count],
                        members=[first.member, second.member],
                    )
                    pair_ops = first.fetch.indices + second.fetch.indices
                    if first.delivery_count == second.delivery_count:
                        found["double-grant"].append(_evidence(pair_ops, **pair_fields))
                        continue
                    for before, after in ((first, second), (second, first)):
                        if before.fetch.complete_ns < after.fetch.invoke_ns and (
                            after.delivery_count < before.delivery_count
                        ):
                            found["delivery-count-regression"].append(_evidence(pair_ops, **pair_fields))
                    if self._lock_overlap(first, second):
                        found["lock-overlap-suspect"].append(_evidence(pair_ops, **pair_fields))
        return found

    def _lock_overlap(self, one: Delivery, other: Delivery) -> bool:
        # The pair is ordered by delivery count, not by fetch invoke time: the broker
        # raises the count on every acquisition, so the lower count was granted first.
        # Fetches overlap in time (a poll is a long fetch with several rounds), so
        # the later grant's fetch may well have been invoked first: member B's poll
        # starts, member A's poll gets count 1 and RELEASEs it, then B's still-running
        # poll acquires count 2. Ordered by invoke time that looked like B holding
        # count 2 while A was granted count 1, a false overlap with no release by B.
        # Equal counts are double grants and regressions are reported elsewhere; here
        # ties keep the invoke order.
        first, second = (one, other) if one.delivery_count <= other.delivery_count else (other, one)
        # `first` was granted first. Its lock was granted no earlier than its invoke,
        # so it is certainly valid until invoke + lock duration; the second grant
        # happened no later than its completion.
        window_end_ns = second.fetch.complete_ns
        if window_end_ns <= first.fetch.invoke_ns:
            return False  # The higher count came first: a delivery-count-regression, not an overlap.
        if window_end_ns >= first.fetch.invoke_ns + self.lock_duration_ns - self.lock_slack_ns:
            return False
        if first.leader_epoch != second.leader_epoch or first.fetch.node != second.fetch.node:
            return False  # A new leader reloads the share state and may grant again.
        if self.disrupted_between(first.partition, first.fetch.invoke_ns, window_end_ns):
            return False
        for exit_event in self.member_exits.get(first.member, []):
            if first.fetch.invoke_ns < exit_event.time_ns < window_end_ns:
                return False
        for ack in self.acks_by_record.get((first.partition, first.offset), []):
            if ack.member == first.member and ack.outcome != "fail" and ack.operation.invoke_ns < window_end_ns:
                return False
        return True

    # ---- I8 ---------------------------------------------------------------------------

    def _newest_epoch_before(self, partition: Any, time_ns: int) -> int | None:
        """The highest leader epoch of `partition` the observer had recorded before `time_ns`."""
        newest = None
        for event in self.partition_moves.get(partition, []):
            if event.f == "leader_change" and event.time_ns < time_ns and event.value.get("epoch") is not None:
                newest = event.value["epoch"] if newest is None else max(newest, event.value["epoch"])
        return newest

    def _cut_off(self, node: Any, time_ns: int) -> bool:
        """Whether `node` was behind a network partition or paused at `time_ns`."""
        cut = False
        for event in self.disruptions:
            if event.time_ns > time_ns:
                break
            value = event.value if isinstance(event.value, dict) else {}
            if event.f in ("partition", "pause") and node in (value.get("targets") or []):
                cut = True
            elif event.f == "heal" or (event.f == "resume" and node in (value.get("targets") or [])):
                cut = False
        return cut

    def stale_sample(self, sample: Op) -> bool:
        """A sample from a deposed leader.

        Such a node (isolated, or paused through the election) still answers from its
        in-memory share state, which may have moved past what it could make durable
        (a lock expiry archiving a record at the limit needs no client, but its write
        cannot reach the share-state log from the wrong side of a partition). It is a
        stale read (reliability-plan §6.5), not the partition's start offset. A sample
        is stale when its leader epoch is below one the observer had already recorded,
        or when its node was cut off (partitioned or paused) at the time and its epoch
        was superseded later: the observer polls, so it learns of a new leader up to
        a poll interval after the controller chose it.
        """
        epoch = sample.value.get("leader_epoch")
        if epoch is None:
            return False
        partition = _partition(sample.value["partition"])
        newest = self._newest_epoch_before(partition, sample.time_ns)
        if newest is not None and epoch < newest:
            return True
        final = self._newest_epoch_before(partition, INCOMPLETE_NS)
        node = sample.value.get("node", sample.node)
        return final is not None and epoch < final and self._cut_off(node, sample.time_ns)

    def check_start_offsets(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = defaultdict(list)
        highest_by_node: dict[tuple[Any, Any], Op] = {}
        by_partition: dict[Any, list[Op]] = defaultdict(list)
        stale = 0
        for sample in self.samples:
            value = sample.value
            if _sample_start(value) is None:
                continue
            if self.stale_sample(sample):
                stale += 1
                continue
            partition = _partition(value["partition"])
            by_partition[partition].append(sample)
            key = (value.get("node", sample.node), partition)
            highest = highest_by_node.get(key)
            if highest is not None and self.reset_between(partition, highest.time_ns, sample.time_ns):
                highest = None
            if highest is not None and _sample_start(value) < _sample_start(highest.value):
                found["start-offset-regression"].append(
                    _evidence(
                        [highest.index, sample.index],
                        node=key[0],
                        partition=partition,
                        earlier=_sample_start(highest.value),
                        later=_sample_start(value),
                    )
                )
                continue
            if highest is None or _sample_start(value) >= _sample_start(highest.value):
                highest_by_node[key] = sample
        # Deliveries below a start offset some node had already reported. Per partition,
        # best[i] is the highest start offset sampled from the last reset up to sample i.
        for partition, samples in by_partition.items():
            times = [sample.time_ns for sample in samples]
            best: list[Op] = []
            for position, sample in enumerate(samples):
                previous = best[-1] if best else None
                if previous is not None and self.reset_between(
                    partition, samples[position - 1].time_ns, sample.time_ns
                ):
                    previous = None
                if previous is None or _sample_start(sample.value) > _sample_start(previous.value):
                    previous = sample
                best.append(previous)
            for delivery in self.deliveries:
                if delivery.partition != partition:
                    continue
                position = bisect.bisect_left(times, delivery.fetch.invoke_ns) - 1
                if position < 0 or self.reset_between(partition, times[position], delivery.fetch.invoke_ns):
                    continue
                bound = best[position]
                if delivery.offset < _sample_start(bound.value):
                    found["delivery-below-start-offset"].append(
                        _evidence(
                            [bound.index] + delivery.fetch.indices,
                            partition=partition,
                            offset=delivery.offset,
                            start_offset=_sample_start(bound.value),
                        )
                    )
        self.stats["stale_samples_ignored"] = stale
        return found

    # ---- I9, I10 ----------------------------------------------------------------------

    def check_truncation(self) -> list[dict[str, Any]]:
        found = []
        reads = [(d.partition, d.offset, d.value, d.fetch) for d in self.deliveries] + [
            (c.partition, c.offset, c.value, c.poll) for c in self.consumed
        ]
        reported: set[Any] = set()
        for partition, offset, value, operation in reads:
            finals = self.final_by_partition.get(partition)
            if not finals or value in self.final_positions or value in reported:
                continue
            # A different value at that offset is an inconsistent offset, and an offset
            # below the first one kept went by retention; only a hole is a truncation.
            if all(offset not in final.log and offset >= final.first_log_offset for final in finals):
                reported.add(value)
                found.append(
                    _evidence(
                        operation.indices + [final.dump.index for final in finals],
                        value=value,
                        partition=partition,
                        offset=offset,
                        acked=value in self.acked,
                    )
                )
        return found

    def check_batches(self) -> list[dict[str, Any]]:
        found = []
        for f in ("share_fetch", "consume"):
            for operation in self.by_f[f]:
                if operation.type != "ok":
                    continue
                offsets: dict[Any, list[int]] = defaultdict(list)
                deadlines: dict[Any, set[Any]] = defaultdict(set)
                for record in operation.completion.value.get("records", []):
                    partition = _partition(record["partition"])
                    offsets[partition].append(int(record["offset"]))
                    if record.get("lock_deadline_ms") is not None:
                        deadlines[partition].add(record["lock_deadline_ms"])
                for partition, sequence in offsets.items():
                    if any(later <= earlier for earlier, later in zip(sequence, sequence[1:])):
                        found.append(_evidence(operation.indices, partition=partition, offsets=sequence))
                    elif len(deadlines[partition]) > 1:
                        found.append(
                            _evidence(
                                operation.indices,
                                partition=partition,
                                lock_deadlines_ms=sorted(deadlines[partition]),
                            )
                        )
        return found

    # ---- I11 --------------------------------------------------------------------------

    def check_terminal_evidence(self) -> list[dict[str, Any]]:
        found = []
        checked: set[tuple[Any, int]] = set()
        for partition, finals in self.final_by_partition.items():
            if self.resets.get(partition) or self.resets.get(None):
                continue  # An admin reset may move the start offset past unacknowledged records.
            for final in finals:
                if not final.has_share_state:
                    continue
                for offset, value in final.log.items():
                    if (partition, offset) in checked or not final.is_terminal(offset):
                        continue
                    if value not in self.attempts:
                        continue  # Already an unexpected value.
                    checked.add((partition, offset))
                    state, _ = final.state_at(offset)
                    accepted, rejected, limit_reachable, support = self._terminal_support(
                        partition, offset, value
                    )
                    explained = {
                        "ACKNOWLEDGED": accepted,
                        "ARCHIVED": rejected or limit_reachable,
                        BELOW_START: accepted or rejected or limit_reachable,
                    }[state]
                    if not explained:
                        found.append(
                            _evidence(
                                support + [final.dump.index],
                                partition=partition,
                                offset=offset,
                                value=value,
                                node=final.node,
                                final_state=state,
                            )
                        )
        return found

    def _terminal_support(self, partition: Any, offset: int, value: Any) -> tuple[bool, bool, bool, list[int]]:
        deliveries = self.deliveries_by_record.get((partition, offset), [])
        holders = {delivery.member for delivery in deliveries}
        accepted = rejected = False
        support: list[int] = [index for attempt in self.attempts[value] for index in attempt.indices]
        for ack in self.acks_by_record.get((partition, offset), []):
            if ack.outcome == "fail" or ack.member not in holders:
                continue
            accepted = accepted or ack.kind == "ACCEPT"
            rejected = rejected or ack.kind == "REJECT"
        # Every fetch with an unknown outcome, invoked after the record could exist,
        # may have acquired it once without anyone seeing it.
        produced_ns = min(attempt.invoke_ns for attempt in self.attempts[value])
        unseen_acquisitions = len(self.ambiguous_fetch_invokes_ns) - bisect.bisect_left(
            self.ambiguous_fetch_invokes_ns, produced_ns
        )
        highest_count = max((delivery.delivery_count for delivery in deliveries), default=0)
        limit_reachable = highest_count + unseen_acquisitions >= self.delivery_limit
        support += [index for delivery in deliveries for index in delivery.fetch.indices]
        return accepted, rejected, limit_reachable, support

    def check_stale_acks(self) -> list[dict[str, Any]]:
        found = []
        for ack in self.acks:
            if ack.outcome != "ok":
                continue
            deliveries = self.deliveries_by_record.get((ack.partition, ack.offset), [])
            own = [
                delivery
                for delivery in deliveries
                if delivery.member == ack.member and delivery.fetch.complete_ns <= ack.operation.invoke_ns
            ]
            fields = dict(partition=ack.partition, offset=ack.offset, member=ack.member, kind=ack.kind)
            if not own:
                found.append(_evidence(ack.operation.indices, reason="never delivered to this member", **fields))
                continue
            held = max(own, key=lambda delivery: delivery.delivery_count)
            for other in deliveries:
                if (
                    other.member == ack.member
                    or other.delivery_count <= held.delivery_count
                    or other.fetch.complete_ns >= ack.operation.invoke_ns
                    or self.reset_between(ack.partition, held.fetch.invoke_ns, ack.operation.complete_ns)
                ):
                    continue
                # The member may have re-acquired the record before the broker saw the ack.
                reacquired = any(
                    mine.member == ack.member
                    and mine.delivery_count > other.delivery_count
                    and mine.fetch.invoke_ns < ack.operation.complete_ns
                    for mine in deliveries
                )
                if not reacquired:
                    found.append(
                        _evidence(
                            held.fetch.indices + other.fetch.indices + ack.operation.indices,
                            reason="re-acquired by another member before the ack was sent",
                            held_delivery_count=held.delivery_count,
                            reacquired_by=other.member,
                            reacquired_delivery_count=other.delivery_count,
                            **fields,
                        )
                    )
                    break
        return found

    # ---- I12 --------------------------------------------------------------------------

    def check_convergence(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for partition, finals in self.final_by_partition.items():
            if len(finals) < 2:
                continue
            watermarks = [final.high_watermark for final in finals if final.high_watermark is not None]
            below = min(watermarks) if watermarks else 0
            differing = sorted(
                offset
                for offset in set().union(*(final.log for final in finals))
                if offset < below and len({final.log.get(offset) for final in finals}) > 1
            )
            if differing:
                found["replica-divergence"].append(
                    _evidence(
                        [final.dump.index for final in finals],
                        partition=partition,
                        what="log",
                        offsets=differing[:_EVIDENCE_OPS_MAX],
                        nodes=[final.node for final in finals],
                    )
                )
            stateful = [final for final in finals if final.has_share_state]
            difference = self._share_state_difference(stateful)
            if difference is not None:
                found["replica-divergence"].append(
                    _evidence(
                        [final.dump.index for final in stateful],
                        partition=partition,
                        what="share state",
                        nodes=[final.node for final in stateful],
                        **difference,
                    )
                )
        served: dict[tuple[Any, Any], dict[Any, list[int]]] = defaultdict(dict)
        for delivery in self.deliveries:
            if delivery.leader_epoch is not None and delivery.fetch.node is not None:
                served[(delivery.partition, delivery.leader_epoch)].setdefault(
                    delivery.fetch.node, delivery.fetch.indices
                )
        for (partition, epoch), nodes in served.items():
            if len(nodes) > 1:
                found["split-brain"].append(
                    _evidence(
                        [index for ops in nodes.values() for index in ops],
                        partition=partition,
                        leader_epoch=epoch,
                        nodes=sorted(nodes, key=repr),
                    )
                )
        return found

    @staticmethod
    def _share_state_difference(finals: list[FinalPartition]) -> dict[str, Any] | None:
        if len(finals) < 2:
            return None
        start_offsets = {final.node: final.start_offset for final in finals}
        if len(set(start_offsets.values())) > 1:
            return {"start_offsets": {str(node): offset for node, offset in start_offsets.items()}}
        # States are constant between run boundaries, so comparing at every boundary
        # of every node is exact without expanding the runs offset by offset.
        boundaries = {finals[0].start_offset}
        for final in finals:
            for first, last, _, _ in final.runs:
                boundaries.update((first, last + 1))
        for offset in sorted(boundary for boundary in boundaries if boundary is not None):
            states = {}
            for final in finals:
                state, count = final.state_at(offset)
                if state == "ACQUIRED":
                    state = "AVAILABLE"
                states[final.node] = (state, count)
            if len(set(states.values())) > 1:
                return {"offset": offset, "states": {str(node): list(pair) for node, pair in states.items()}}
        return None

    # ---- liveness ---------------------------------------------------------------------

    def check_progress(self) -> list[dict[str, Any]]:
        recoveries = [event for event in self.disruptions if event.f in RECOVERY_EVENTS]
        if not recoveries:
            return []
        healed = recoveries[-1]
        deadline_ns = healed.time_ns + self.progress_window_ns
        history_end_ns = max((op.time_ns for op in self.history), default=0)
        found = []

        def completed_in_window(operation: Operation, needs_records: bool) -> bool:
            if operation.type != "ok" or not healed.time_ns < operation.complete_ns <= deadline_ns:
                return False
            return not needs_records or bool(operation.completion.value.get("records"))

        produces = self.by_f["produce"]
        reads = self.by_f["share_fetch"] + self.by_f["consume"]
        # Reads are owed progress only if acked data was waiting unread by the heal.
        waiting = any(
            operation.complete_ns <= deadline_ns
            and self.first_read.get(value, (2**63 - 1,))[0] > healed.time_ns
            for value, (_, _, operation) in self.acked.items()
        )
        for kind, operations, needs_records, owed in (
            ("produce", produces, False, True),
            ("read", reads, True, waiting),
        ):
            attempted = any(operation.complete_ns > healed.time_ns for operation in operations)
            if not owed or not attempted:
                continue
            if any(completed_in_window(operation, needs_records) for operation in operations):
                continue
            if history_end_ns < deadline_ns:
                self.notes.append(f"the history ends inside the progress window of {kind}s after the last heal")
                continue
            found.append(
                _evidence(
                    [healed.index],
                    kind=kind,
                    healed_at_ns=healed.time_ns,
                    window_ms=self.progress_window_ns // _NS_PER_MS,
                )
            )
        return found

    # ---- coverage and statistics ------------------------------------------------------

    def coverage_counts(self) -> dict[str, int]:
        limit_archives = set()
        for (partition, offset), deliveries in self.deliveries_by_record.items():
            for delivery in deliveries:
                if delivery.delivery_count < self.delivery_limit:
                    continue
                settled = any(
                    ack.outcome == "ok" and ack.kind in ("ACCEPT", "REJECT")
                    for ack in self.acks_by_record.get((partition, offset), [])
                )
                if not settled:
                    limit_archives.add((partition, offset))
        return {
            "faults": sum(1 for event in self.events if event.f in FAULT_EVENTS),
            "leader_changes": sum(1 for event in self.events if event.f == "leader_change"),
            "coordinator_moves": sum(1 for event in self.events if event.f == "coordinator_move"),
            "acked_produces": len(self.acked),
            "redeliveries": sum(1 for delivery in self.deliveries if delivery.delivery_count > 1),
            "delivery_limit_archives": len(limit_archives),
            # §6.4 asks for acks refused as stale (the lock expired and the record moved
            # on); session and membership refusals do not show that the broker fences.
            "failed_acks": sum(
                1 for ack in self.acks if ack.outcome == "fail" and ack.error == "INVALID_RECORD_STATE"
            ),
        }

    def collect_stats(self) -> None:
        types = Counter((operation.f, operation.type) for operation in self.operations)
        self.stats.update(
            {
                "ops": len(self.history),
                "operations": {f"{f}:{op_type}": count for (f, op_type), count in sorted(types.items())},
                "events": dict(sorted(Counter(event.f for event in self.events).items())),
                "produce_attempts": len(self.attempts),
                "produce_ok": len(self.acked),
                "recovered": sum(
                    1 for value in self.attempts if value not in self.acked and self.seen(value)
                ),
                "deliveries": len(self.deliveries),
                "consumed": len(self.consumed),
                "acks": dict(
                    sorted(Counter(f"{ack.kind}:{ack.outcome}" for ack in self.acks).items())
                ),
                "final_dump_nodes": sorted(map(str, self.final)),
            }
        )


def _sample_start(value: Mapping[str, Any]) -> int | None:
    """The start offset a sample vouches for: the durable one when the node reports it.

    A leader's live start offset runs ahead of its share-state log while a write is in
    flight (an ACCEPT being made durable); a failover in that window restarts from the
    durable one, so only that one must never move back (I8).
    """
    durable = value.get("durable_start_offset")
    if durable is not None and durable >= 0:
        return durable
    return value.get("start_offset")


def check(
    history: Sequence[Op],
    *,
    delivery_limit: int,
    lock_duration_ms: int,
    coverage_gates: Mapping[str, int] = DEFAULT_COVERAGE_GATES,
    lock_slack_ms: int = 250,
    progress_window_ms: int = 10_000,
) -> CheckResult:
    """Check one recorded history; see the module docstring for every rule."""
    if delivery_limit < 1 or lock_duration_ms < 1:
        raise ValueError("delivery_limit and lock_duration_ms must be positive")
    unknown_gates = set(coverage_gates) - set(DEFAULT_COVERAGE_GATES)
    if unknown_gates:
        raise ValueError(f"unknown coverage gates {sorted(unknown_gates)}; known: {sorted(DEFAULT_COVERAGE_GATES)}")
    analysis = _Analysis(
        history,
        delivery_limit=delivery_limit,
        lock_duration_ms=lock_duration_ms,
        lock_slack_ms=lock_slack_ms,
        progress_window_ms=progress_window_ms,
    )
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    found.update(analysis.check_lost())
    found["unseen"] = analysis.check_unseen()
    found.update(analysis.check_values())
    found.update(analysis.check_offsets())
    found["offset-regression"] = analysis.check_offset_regression()
    found["resurrection"] = analysis.check_resurrection()
    found.update(analysis.check_grants())
    found.update(analysis.check_start_offsets())
    found["delivered-then-truncated"] = analysis.check_truncation()
    found["batch-order"] = analysis.check_batches()
    found["phantom-terminal"] = analysis.check_terminal_evidence()
    found["stale-ack-accepted"] = analysis.check_stale_acks()
    found.update(analysis.check_convergence())
    found["no-progress-after-heal"] = analysis.check_progress()
    anomalies = {name: found.get(name, []) for name in ANOMALY_CLASSES}
    assert set(found) <= set(ANOMALY_CLASSES), set(found) - set(ANOMALY_CLASSES)

    analysis.collect_stats()
    counts = analysis.coverage_counts()
    coverage = {
        gate: {"required": required, "observed": counts[gate], "met": counts[gate] >= required}
        for gate, required in coverage_gates.items()
    }
    analysis.stats["coverage_counts"] = counts
    analysis.stats["anomaly_counts"] = {name: len(found) for name, found in anomalies.items() if found}
    notes = analysis.notes
    if not analysis.final:
        notes.append("no final_dump: loss, liveness and convergence after the drain cannot be decided")

    result = CheckResult(valid=True, anomalies=anomalies, stats=analysis.stats, coverage=coverage, notes=notes)
    if result.failing_classes:
        result.valid = False
    elif notes:
        result.valid = "unknown"
    elif not all(gate["met"] for gate in coverage.values()):
        result.valid = "invalid"
    return result


def _parse_gate(text: str) -> tuple[str, int]:
    name, _, minimum = text.partition("=")
    if name not in DEFAULT_COVERAGE_GATES or not minimum.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=N with NAME in {sorted(DEFAULT_COVERAGE_GATES)}")
    return name, int(minimum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos.checker", description="Check a recorded chaos history."
    )
    parser.add_argument("history", help="the history, a JSON-lines file")
    parser.add_argument("--delivery-limit", type=int, default=4, help="group.share.delivery.count.limit of the run")
    parser.add_argument(
        "--lock-duration-ms", type=int, default=2000, help="group.share.record.lock.duration.ms of the run"
    )
    parser.add_argument("--gate", type=_parse_gate, action="append", default=[], help="override a gate: NAME=N")
    parser.add_argument("--no-gates", action="store_true", help="check safety only; no coverage gates")
    parser.add_argument("--out", help="write report.json and summary.txt into this directory")
    arguments = parser.parse_args(argv)

    gates = {} if arguments.no_gates else dict(DEFAULT_COVERAGE_GATES)
    gates.update(dict(arguments.gate))
    history = load_history(arguments.history)
    result = check(
        history,
        delivery_limit=arguments.delivery_limit,
        lock_duration_ms=arguments.lock_duration_ms,
        coverage_gates=gates,
    )
    from tests.chaos.report import summary_text, write_report

    if arguments.out:
        write_report(result, history, arguments.out)
    sys.stdout.write(summary_text(result, history))
    # 0 passed, 1 a violation, 2 could not be decided or not enough coverage.
    return 0 if result.valid is True else 1 if result.valid is False else 2


if __name__ == "__main__":
    raise SystemExit(main())
