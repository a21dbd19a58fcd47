"""Shared helpers of the cluster benchmarks (bench_node, bench_replication, bench_failover, bench_share).

Rules the benchmarks follow
* Every figure is printed, never asserted: a benchmark reports, a test decides.
* Clusters are real ``python -m node`` processes started by tests/harness.py on
  127.0.0.1 in a temporary directory; they are always closed (reaped) on exit.
* Client work that must not share the benchmark's GIL runs in worker processes
  started with the *spawn* method: the parent has live gRPC channels, and gRPC
  does not support fork with channels open.
* Each benchmark ends by printing one ``SUMMARY {json}`` line per headline
  figure, which tests/bench/run_all.py collects into its table. A summary row
  is ``{"bench", "figure", "value", "unit", "aim", "ratio_to_aim", "note"}``.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.harness import Cluster, start_cluster  # noqa: E402

SPAWN = multiprocessing.get_context("spawn")


@contextlib.contextmanager
def bench_cluster(nodes: int, settings: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A fresh cluster under a temporary directory, closed and removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as base_dir:
        cluster = start_cluster(nodes, Path(base_dir), settings)
        try:
            yield cluster
        finally:
            cluster.close()


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[index]


def spread(values: Sequence[float], digits: int = 0) -> str:
    """``median [min-max] (n=runs)`` for a table cell."""
    fmt = f"{{:,.{digits}f}}"
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}] (n={len(values)})"


def summary(bench: str, figure: str, value: float, unit: str, aim: float | None = None, note: str = "", higher_is_better: bool = True) -> None:
    """Print one SUMMARY line for run_all.py (and for a reader of the raw output)."""
    ratio = None
    if aim:
        ratio = value / aim if higher_is_better else aim / value if value else None
    row: dict[str, Any] = {
        "bench": bench,
        "figure": figure,
        "value": value,
        "unit": unit,
        "aim": aim,
        "higher_is_better": higher_is_better,
        "ratio_to_aim": ratio,
        "note": note,
    }
    print("SUMMARY " + json.dumps(row), flush=True)


def machine_line() -> str:
    """One line naming the machine, so raw output can be matched to docs/benchmarks.md."""
    cpus = os.cpu_count()
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = "?"
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    # The load average says whether other work shared the machine during the run.
    return f"python {sys.version.split()[0]}, {cpus} CPUs ({model}), load average {load}, {time.strftime('%Y-%m-%d %H:%M:%S')}"


def value_of(size: int, index: int = 0) -> bytes:
    """A record value of ``size`` bytes (not all zeroes, so compression would notice)."""
    seed = index.to_bytes(8, "big")
    return (seed * (size // 8 + 1))[:size]


def produce_all(bootstrap: str, topic: str, count: int, size: int, partition: int | None = 0, acks: str = "1") -> None:
    """Fill a topic quickly (setup for consumer benchmarks; not itself measured)."""
    from client import Producer

    value = value_of(size)
    config = {"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 5}
    with Producer(config) as producer:
        for _ in range(count):
            producer.send(topic, value, partition=partition)
        producer.flush()
