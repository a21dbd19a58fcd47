"""Run every benchmark in sequence and print a summary table (``make bench``).

Usage (from the repository root)::

    .venv/bin/python tests/bench/run_all.py              # everything, full size (~15 min on 2 cores)
    .venv/bin/python tests/bench/run_all.py --quick      # smaller runs, one repeat each
    .venv/bin/python tests/bench/run_all.py --only node  # one bench (repeatable: --only node --only share)

Each benchmark runs as its own process (so a cluster it starts is reaped with
it even if it fails) and its output is shown as it comes. The cluster benches
end with ``SUMMARY {json}`` lines (tests/bench/common.py); the two in-process
benches (log, share-state load) print plain lines, which are parsed here. A
bench that fails is reported in the table and the run goes on; the exit status
is 1 if any failed. Figures are printed against the aims of the issues, never
asserted: timing belongs to benchmarks, not tests.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parents[1]


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    takes_quick: bool  # teammates' in-process benches have no --quick flag (and need none: they are short)


BENCHES = (
    Bench("log", "bench_log.py", False),
    Bench("share_state_load", "bench_share_state_load.py", False),
    Bench("node", "bench_node.py", True),
    Bench("replication", "bench_replication.py", True),
    Bench("failover", "bench_failover.py", True),
    Bench("share", "bench_share.py", True),
)

_LOG_LINE = re.compile(r"^\s*(\d+) B values, (\w+)\s.*append\s+([\d.]+) M records/s\s+(\d+) MB/s.*read\+crc\s+([\d.]+) M records/s")
_STATE_LINE = re.compile(r"^\((a|b)\) (.*?):.*decode\+replay ([\d.]+) s")


def parse_plain(name: str, lines: list[str]) -> list[dict]:
    """Summary rows from the output of the two benches that print plain lines."""
    rows: list[dict] = []
    for line in lines:
        if name == "log" and (match := _LOG_LINE.match(line)):
            size, compression, append_m, append_mb, read_m = match.groups()
            rows.append(row(name, f"log append {size} B {compression}", float(append_m) * 1e6, "records/s", f"{append_mb} MB/s; read+crc {read_m} M/s"))
        elif name == "share_state_load" and (match := _STATE_LINE.match(line)):
            part, what, seconds = match.groups()
            rows.append(row(name, f"({part}) load {what.strip()}", float(seconds), "s"))
    return rows


def row(bench: str, figure: str, value: float, unit: str, note: str = "") -> dict:
    return {"bench": bench, "figure": figure, "value": value, "unit": unit, "aim": None, "ratio_to_aim": None, "note": note, "higher_is_better": True}


def run(bench: Bench, quick: bool) -> tuple[int, list[dict], float]:
    command = [sys.executable, str(BENCH_DIR / bench.script)]
    if quick and bench.takes_quick:
        command.append("--quick")
    print(f"\n===== {bench.name}: {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
        status = process.wait()
    rows = [json.loads(line[len("SUMMARY "):]) for line in lines if line.startswith("SUMMARY ")]
    if not rows:
        rows = parse_plain(bench.name, lines)
    return status, rows, time.monotonic() - started


def fmt_value(value: float, unit: str) -> str:
    if unit in ("records/s",):
        return f"{value:,.0f} {unit}"
    if unit in ("s", "ms"):
        return f"{value:.2f} {unit}"
    return f"{value:.2f} {unit}"


def main() -> int:
    parser = argparse.ArgumentParser(description="Run shoal's benchmarks and print a summary table.")
    parser.add_argument("--only", action="append", choices=[b.name for b in BENCHES], help="run only this bench (repeatable)")
    parser.add_argument("--quick", action="store_true", help="smaller runs, one repeat each (the cluster benches)")
    args = parser.parse_args()
    chosen = [b for b in BENCHES if not args.only or b.name in args.only]

    results: list[tuple[Bench, int, list[dict], float]] = []
    for bench in chosen:
        status, rows, seconds = run(bench, args.quick)
        results.append((bench, status, rows, seconds))

    print("\n===== summary" + (" (--quick: fewer records, one run each; not for the record)" if args.quick else ""))
    print(f"| bench | figure | value | aim | vs aim | note |")
    print("|---|---|---|---|---|---|")
    failed = False
    for bench, status, rows, seconds in results:
        if status != 0:
            failed = True
            print(f"| {bench.name} | FAILED (exit status {status}) after {seconds:.0f} s | | | | see output above |")
        for item in rows:
            aim = item.get("aim")
            aim_text = ""
            verdict = ""
            if aim is not None:
                aim_text = ("≥ " if item.get("higher_is_better", True) else "≤ ") + fmt_value(aim, item["unit"])
                met = item["value"] >= aim if item.get("higher_is_better", True) else item["value"] <= aim
                verdict = ("met" if met else "NOT met") + f" ({item['ratio_to_aim']:.2f} of aim)" if item.get("ratio_to_aim") else ""
            print(f"| {bench.name} | {item['figure']} | {fmt_value(item['value'], item['unit'])} | {aim_text} | {verdict} | {item.get('note', '')} |")
    total = sum(r[3] for r in results)
    print(f"\n{len(results)} bench(es) in {total:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
