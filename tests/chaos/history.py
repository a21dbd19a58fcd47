"""The chaos history: what a run records, one JSON line per operation.

Rules
-----
* A history is a JSON-lines file. Each line is one `Op`:
  `{"index", "process", "type", "f", "value", "time_ns", "node"}`.
  `index` counts from 0 in file order; `time_ns` is `time.monotonic_ns()` of the
  harness, stamped under the same lock as `index`, so index order is time order.
  `node` is the id of the node that served the operation, or null.
* `type` is "invoke", "ok", "fail" or "info" (Jepsen's vocabulary):
  - "ok": the operation happened, with the completion's value;
  - "fail": the operation definitely did NOT happen (the broker guarantees no
    effect); value `{"error": CODE}`;
  - "info": unknown (timeout, reset, crash); value `{"reason": ...}`. It may or
    may not have happened.
* A client operation is an "invoke" line followed later by exactly one completion
  line of the same `process` and `f`. One process runs one operation at a time,
  as in Jepsen; an invoke that never completes (the harness crashed) counts as
  "info". An "info" line with no open invoke of its process and `f` is an event:
  nemesis faults, member lifecycle, samples and final dumps are events.
* Client operations (`f`) and their values:
  - `produce`: invoke `{"partition", "value"}` -> ok `{"partition", "offset",
    "value"}`. Values are unique strings "P<n>-<seq>"; a value invoked twice is a
    non-idempotent retry.
  - `share_fetch`: invoke `{"member"}` -> ok `{"records": [{"partition", "offset",
    "value", "delivery_count", "member", "lock_deadline_ms", "leader_epoch"}]}`.
    `leader_epoch` is the epoch of the partition leader that acquired the record
    (not the epoch stamped in the record batch); `lock_deadline_ms` is in the
    broker's clock and is only compared within one response.
  - `ack`: invoke `{"member", "acks": [[partition, offset, "ACCEPT"|"RELEASE"|
    "REJECT"]]}` -> ok `{"results": [[partition, offset, "ok"|"fail:<CODE>"]]}`
    per record, or fail / info for the whole request.
  - `consume` (classic consumer-group poll): invoke `{"member"}` -> ok
    `{"records": [{"partition", "offset", "value"}]}`.
* Events (written by `HistoryRecorder.event`, type "info"):
  - `sample`: `{"node", "partition", "start_offset", "durable_start_offset",
    "high_watermark", "leader_epoch", "state_epoch"}` from the admin sampler
    (`durable_start_offset`: as of the last durable share-state write);
  - member lifecycle `join`, `leave`, `crash`: `{"member"}`;
  - nemesis `kill`, `restart`, `pause`, `resume`, `partition`, `heal`, `clock`,
    `kill_all`: `{"targets": [...], ...}`; `admin_reset`: `{"partition"}` (null
    means every partition);
  - observations `leader_change`, `coordinator_move`: `{"partition", "old", "new"}`;
  - `final_dump`, one per node after the drain: `{"node", "partitions": {p:
    {"log": [[offset, value], ...], "high_watermark", "start_offset", "states":
    [[first, last, state, delivery_count], ...]}}}`, with state one of
    AVAILABLE, ACQUIRED, ACKNOWLEDGED, ARCHIVED. Offsets below `start_offset` are
    terminal; offsets at or above it and past the last run are AVAILABLE.
    `start_offset` and `states` are null on a node without share state.

Theory of operation
-------------------
`HistoryRecorder` is shared by every harness thread. Each call takes one lock,
stamps index and time, writes one line and flushes it, so that the file is
complete up to the last finished call even if the harness is killed (a process
crash keeps the page cache; pass `fsync=True` to survive a machine crash too).
`load_history` reads the file back, forgiving only a torn last line, and
`pair_operations` turns the flat list into client operations (invoke plus
completion) and events, which is the shape the checker works on.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OP_TYPES = frozenset({"invoke", "ok", "fail", "info"})

# Client operations: each is an invoke followed by one completion.
CLIENT_FUNCTIONS = frozenset({"produce", "share_fetch", "ack", "consume"})

# Events that inject a fault; the coverage gate "faults" counts these.
FAULT_EVENTS = frozenset({"kill", "pause", "partition", "clock", "kill_all"})
# Events that undo a fault; the last of them starts the progress deadline.
RECOVERY_EVENTS = frozenset({"heal", "resume", "restart"})
NEMESIS_EVENTS = FAULT_EVENTS | RECOVERY_EVENTS | {"admin_reset"}
LIFECYCLE_EVENTS = frozenset({"join", "leave", "crash"})
OBSERVATION_EVENTS = frozenset({"leader_change", "coordinator_move", "sample", "final_dump"})

# A completion time for operations that never completed: they are never known
# to have finished before anything.
INCOMPLETE_NS = 2**63 - 1


class HistoryFormatError(ValueError):
    """The history file is not in the format this module describes."""


@dataclass(frozen=True, slots=True)
class Op:
    """One line of the history."""

    index: int
    process: str | int
    type: str
    f: str
    value: Any
    time_ns: int
    node: str | int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "process": self.process,
            "type": self.type,
            "f": self.f,
            "value": self.value,
            "time_ns": self.time_ns,
            "node": self.node,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Op:
        missing = {"index", "process", "type", "f", "time_ns"} - raw.keys()
        if missing:
            raise HistoryFormatError(f"op is missing {sorted(missing)}: {raw!r}")
        if raw["type"] not in OP_TYPES:
            raise HistoryFormatError(f"op type {raw['type']!r} is not one of {sorted(OP_TYPES)}")
        return cls(
            index=int(raw["index"]),
            process=raw["process"],
            type=raw["type"],
            f=raw["f"],
            value=raw.get("value"),
            time_ns=int(raw["time_ns"]),
            node=raw.get("node"),
        )


@dataclass(frozen=True, slots=True)
class Operation:
    """A client operation: its invoke and its completion (None if it never completed)."""

    invoke: Op
    completion: Op | None

    @property
    def f(self) -> str:
        return self.invoke.f

    @property
    def type(self) -> str:
        # An operation that never completed is indeterminate, exactly like "info".
        return self.completion.type if self.completion is not None else "info"

    @property
    def invoke_ns(self) -> int:
        return self.invoke.time_ns

    @property
    def complete_ns(self) -> int:
        return self.completion.time_ns if self.completion is not None else INCOMPLETE_NS

    @property
    def node(self) -> str | int | None:
        return self.completion.node if self.completion is not None else None

    @property
    def indices(self) -> list[int]:
        if self.completion is None:
            return [self.invoke.index]
        return [self.invoke.index, self.completion.index]


class OpHandle:
    """The open invoke of one client operation; complete it exactly once."""

    def __init__(self, recorder: HistoryRecorder, invoke: Op) -> None:
        self._recorder = recorder
        self.invoke = invoke
        self.completion: Op | None = None

    def ok(self, value: Any = None, node: str | int | None = None) -> Op:
        return self._complete("ok", value, node)

    def fail(self, error_code: str, node: str | int | None = None) -> Op:
        # Only for definite failures: the broker guarantees the operation had no effect.
        return self._complete("fail", {"error": error_code}, node)

    def info(self, reason: str, node: str | int | None = None) -> Op:
        return self._complete("info", {"reason": reason}, node)

    def _complete(self, op_type: str, value: Any, node: str | int | None) -> Op:
        if self.completion is not None:
            # Two completions would make the history ambiguous; that is a harness bug.
            raise RuntimeError(f"operation {self.invoke.index} completed twice")
        self.completion = self._recorder._append(
            self.invoke.process, op_type, self.invoke.f, value, node
        )
        return self.completion


class HistoryRecorder:
    """Thread-safe writer of a history file; every line is flushed as it is written."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        fsync: bool = False,
    ) -> None:
        # "x": a run never appends to, or overwrites, the evidence of another run.
        self.path = Path(path)
        self._file = open(self.path, "x", encoding="utf-8")
        self._clock_ns = clock_ns
        self._fsync = fsync
        self._lock = threading.Lock()
        self._next_index = 0

    def invoke(self, process: str | int, f: str, value: Any) -> OpHandle:
        return OpHandle(self, self._append(process, "invoke", f, value, None))

    def event(
        self,
        f: str,
        value: Any,
        *,
        process: str | int = "nemesis",
        node: str | int | None = None,
    ) -> Op:
        if f in CLIENT_FUNCTIONS:
            # It would be read back as the completion of an open client operation.
            raise ValueError(f"{f!r} is a client operation, not an event; use invoke()")
        return self._append(process, "info", f, value, node)

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> HistoryRecorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _append(
        self, process: str | int, op_type: str, f: str, value: Any, node: str | int | None
    ) -> Op:
        with self._lock:
            # Index and time are stamped under one lock so that index order is time order.
            op = Op(self._next_index, process, op_type, f, value, self._clock_ns(), node)
            self._file.write(json.dumps(op.to_dict(), separators=(",", ":")) + "\n")
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())
            self._next_index += 1
            return op


def load_history(path: str | os.PathLike[str]) -> list[Op]:
    """Read a history file. A torn last line (the harness died mid-write) is dropped."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    torn_tail = lines[-1] != ""
    ops: list[Op] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as error:
            if torn_tail and number == len(lines):
                break
            raise HistoryFormatError(f"{path}:{number}: not JSON: {error}") from error
        ops.append(Op.from_dict(raw))
    return ops


def write_history(path: str | os.PathLike[str], ops: Iterable[Op]) -> None:
    """Write ops as a history file (for synthetic histories and for slices)."""
    with open(path, "w", encoding="utf-8") as file:
        for op in ops:
            file.write(json.dumps(op.to_dict(), separators=(",", ":")) + "\n")


def pair_operations(history: Iterable[Op]) -> tuple[list[Operation], list[Op]]:
    """Split a history into client operations (in invoke order) and events."""
    operations: list[Operation] = []
    events: list[Op] = []
    open_invokes: dict[str | int, tuple[int, Op]] = {}
    for op in history:
        if op.type == "invoke":
            previous = open_invokes.pop(op.process, None)
            if previous is not None:
                # The process started again without completing: its old op is indeterminate.
                operations[previous[0]] = Operation(previous[1], None)
            open_invokes[op.process] = (len(operations), op)
            operations.append(Operation(op, None))
            continue
        pending = open_invokes.get(op.process)
        if pending is not None and pending[1].f == op.f:
            del open_invokes[op.process]
            operations[pending[0]] = Operation(pending[1], op)
        elif op.type == "info":
            events.append(op)
        else:
            raise HistoryFormatError(
                f"op {op.index}: {op.type} {op.f!r} of process {op.process!r} has no invoke"
            )
    return operations, events
