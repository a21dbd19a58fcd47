"""The chaos report: what a checked run did and, for each anomaly, the ops that show it.

Rules
-----
* `write_report(result, history, out_dir)` writes two files and nothing else:
  - `report.json`: the `CheckResult` (verdict, anomalies, stats, coverage, notes),
    the throughput per window, and for every piece of evidence its `"slice"`: the
    full history ops its `"ops"` indices name, so that one file replays a finding;
  - `summary.txt`: the same for a human (the text `summary_text` returns).
* The summary shows every anomaly class with its count, but only the first
  `EXAMPLES_PER_CLASS` pieces of evidence of each; report.json has all of them.
* A fetch or consume response inside a slice keeps only the records the
  evidence names (by value, or by partition and offset), if any; it is then
  marked `"abridged": true`.
* A final dump holds whole logs, so inside a slice it is abridged to the
  evidence's partition and the offsets within `DUMP_CONTEXT_OFFSETS` of the
  evidence's offset (marked `"abridged": true`); the history file has it whole.
  Summary lines are cut at `SUMMARY_LINE_MAX` characters.
* Throughput is counted per `WINDOW_S` seconds from the first op: ok produces,
  records delivered by share fetches, records consumed, and faults injected.

Theory of operation
-------------------
Pure formatting over the checker's result and the history: nothing here decides
whether a run passed. Ops are looked up by index (history indices are dense from 0,
but a lookup table keeps this correct for a sliced or filtered history too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.chaos.history import FAULT_EVENTS, Op, pair_operations

if TYPE_CHECKING:
    from tests.chaos.checker import CheckResult

WINDOW_S = 10
EXAMPLES_PER_CLASS = 5
DUMP_CONTEXT_OFFSETS = 3
SUMMARY_LINE_MAX = 400
_NS_PER_S = 1_000_000_000


def throughput_windows(history: Sequence[Op], window_s: int = WINDOW_S) -> list[dict[str, int]]:
    """Counts per window of `window_s` seconds, starting at the first op."""
    if not history:
        return []
    start_ns = min(op.time_ns for op in history)
    end_ns = max(op.time_ns for op in history)
    windows = [
        {"start_s": position * window_s, "produced": 0, "delivered": 0, "consumed": 0, "faults": 0}
        for position in range((end_ns - start_ns) // (window_s * _NS_PER_S) + 1)
    ]

    def window_of(time_ns: int) -> dict[str, int]:
        return windows[(time_ns - start_ns) // (window_s * _NS_PER_S)]

    operations, events = pair_operations(history)
    for operation in operations:
        if operation.type != "ok":
            continue
        window = window_of(operation.complete_ns)
        if operation.f == "produce":
            window["produced"] += 1
        elif operation.f == "share_fetch":
            window["delivered"] += len(operation.completion.value.get("records", []))
        elif operation.f == "consume":
            window["consumed"] += len(operation.completion.value.get("records", []))
    for event in events:
        if event.f in FAULT_EVENTS:
            window_of(event.time_ns)["faults"] += 1
    return windows


def slice_op(op: Op, evidence: dict[str, Any]) -> dict[str, Any]:
    """One op of an evidence slice; a final dump keeps only what concerns the evidence."""
    raw = op.to_dict()
    wanted = evidence.get("partition")
    offsets = evidence.get("offsets") or ([evidence["offset"]] if "offset" in evidence else [])
    if op.f in ("share_fetch", "consume") and op.type == "ok" and isinstance(op.value, dict):
        # A response may carry hundreds of records; keep the ones the evidence names.
        records = op.value.get("records", [])
        relevant = [
            record
            for record in records
            if record.get("value") == evidence.get("value")
            or (str(record.get("partition")) == str(wanted) and record.get("offset") in offsets)
        ]
        if relevant and len(relevant) < len(records):
            raw["value"] = {**op.value, "records": relevant, "abridged": True}
        return raw
    if op.f != "final_dump" or not isinstance(op.value, dict):
        return raw
    low = min(offsets, default=0) - DUMP_CONTEXT_OFFSETS
    high = max(offsets, default=0) + DUMP_CONTEXT_OFFSETS
    partitions = {}
    for partition, dump in op.value.get("partitions", {}).items():
        if wanted is not None and str(partition) != str(wanted):
            continue
        partitions[partition] = {
            **dump,
            "log": [entry for entry in dump.get("log", []) if low <= entry[0] <= high],
            "states": [run for run in (dump.get("states") or []) if run[0] <= high and run[1] >= low],
        }
    raw["value"] = {**op.value, "partitions": partitions, "abridged": True}
    return raw


def _verdict(valid: bool | str) -> str:
    return {True: "PASS", False: "FAIL"}.get(valid, str(valid).upper())  # type: ignore[arg-type]


def summary_text(result: CheckResult, history: Sequence[Op]) -> str:
    from tests.chaos.checker import WARNING_CLASSES

    by_index = {op.index: op for op in history}
    lines = [f"verdict: {_verdict(result.valid)}", ""]
    for note in result.notes:
        lines.append(f"note: {note}")
    if result.notes:
        lines.append("")

    lines.append("anomalies:")
    found_any = False
    for name, evidence in result.anomalies.items():
        if evidence:
            found_any = True
            warning = " (warning)" if name in WARNING_CLASSES else ""
            lines.append(f"  {name}{warning}: {len(evidence)}")
    if not found_any:
        lines.append("  none")
    lines.append("")

    lines.append("coverage:")
    for gate, figures in result.coverage.items():
        mark = "ok" if figures["met"] else "NOT MET"
        lines.append(f"  {gate}: {figures['observed']} (required {figures['required']}) {mark}")
    counts = result.stats.get("coverage_counts", {})
    lines.append(
        f"faults injected: {counts.get('faults', 0)}, leader changes: {counts.get('leader_changes', 0)}, "
        f"coordinator moves: {counts.get('coordinator_moves', 0)}"
    )
    events = result.stats.get("events", {})
    if events:
        lines.append("events: " + ", ".join(f"{f}={count}" for f, count in events.items()))
    lines.append("")

    lines.append(f"throughput per {WINDOW_S} s window (start_s produced delivered consumed faults):")
    for window in throughput_windows(history):
        lines.append(
            f"  {window['start_s']:>6} {window['produced']:>8} {window['delivered']:>9} "
            f"{window['consumed']:>8} {window['faults']:>6}"
        )
    lines.append("")

    for name, evidence in result.anomalies.items():
        if not evidence:
            continue
        lines.append(f"== {name}: {len(evidence)} ==")
        for item in evidence[:EXAMPLES_PER_CLASS]:
            fields = {key: value for key, value in item.items() if key != "ops"}
            lines.append("  " + json.dumps(fields, default=str))
            for index in item["ops"]:
                op = by_index.get(index)
                if op is not None:
                    line = json.dumps(slice_op(op, item), default=str)
                    if len(line) > SUMMARY_LINE_MAX:
                        line = line[: SUMMARY_LINE_MAX - 3] + "..."
                    lines.append("    " + line)
        if len(evidence) > EXAMPLES_PER_CLASS:
            lines.append(f"  ... {len(evidence) - EXAMPLES_PER_CLASS} more in report.json")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_report(result: CheckResult, history: Sequence[Op], out_dir: str | os.PathLike[str]) -> Path:
    """Write report.json and summary.txt into out_dir (created if needed); return out_dir."""
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    by_index = {op.index: op for op in history}
    report: dict[str, Any] = result.to_dict()
    report["verdict"] = _verdict(result.valid)
    report["anomalies"] = {
        name: [
            {**item, "slice": [slice_op(by_index[index], item) for index in item["ops"] if index in by_index]}
            for item in evidence
        ]
        for name, evidence in result.anomalies.items()
    }
    report["throughput"] = throughput_windows(history)
    (directory / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    (directory / "summary.txt").write_text(summary_text(result, history), encoding="utf-8")
    return directory
