"""Benchmark: share groups — overhead against consumer groups, scaling with slow consumers, durable acks.

Run from the repository root: ``.venv/bin/python tests/bench/bench_share.py [--quick] [--part a,b,c]``.

(a) **Overhead.** One node, one partition holding ``N`` records of 100 B.
    k = 1..4 consumer processes read it all: a share group (explicit mode,
    every record ACCEPTed, acknowledgements riding on the next ShareFetch,
    batch_optimized acquisition, max.poll.records 500) against a consumer
    group (``client.Consumer`` subscribed; with one partition only one member
    is assigned). Throughput = N / (last receipt − first receipt) over all
    workers, so joining time is excluded.
(b) **Scaling with slow consumers** (the talk's claim). One node, one
    partition, every record costs 10 ms of processing, modelled by
    ``time.sleep(0.010)`` in the consumer (that sleep *is* the work), then an
    explicit ACCEPT. k = 1, 2, 4, ... 64 consumers, run as threads, at most 8
    per process (ceil(k/8) processes): sleeping threads release the GIL, so
    threads model k independent workers while keeping 64 consumers within
    what 2 cores and RAM carry. Settings: ``share.acquire.mode=record_limit``
    and ``max.poll.records=20`` — each poll acquires at most 20 records, so
    one consumer holds ~200 ms of work and the partition's records spread
    over all members (batch_optimized would hand a whole ~500-record producer
    batch to the first poller and starve the rest). 20 rather than 10: with
    10, 64 consumers make 640 ShareFetch round trips/s and each poll's round
    trip (tens of ms on the loaded 2-core box) becomes a visible share of the
    100 ms of work (measured 0.64-0.66 of ideal at k=64, against 0.94 with 20);
    64 x 20 = 1,280 records in flight stays under the 2,000 record locks per
    share partition. The default 30 s lock duration is far above 200 ms, so
    no lock expires. Throughput is counted
    over a steady-state window of ``window`` seconds that starts once every
    consumer has processed a record; ideal = k × 100 records/s.
(c) **Durable acknowledgements.** One consumer, explicit ACCEPT of every
    record, max.poll.records 500: the share-partition leader writes every
    acknowledgement to the share coordinator and replies only when the state
    write is durable (acks=all on the state partition). Single node against
    3 nodes with the topic and the state topic at RF 3.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.common import SPAWN, bench_cluster, machine_line, produce_all, summary  # noqa: E402

BENCH = "share"
THREADS_PER_PROCESS = 8
#: max.poll.records in part (b); see the module docstring for why 20.
POLL_RECORDS_B = 20


# ---------------------------------------------------------------- workers


def _share_thread(config: dict, topic: str, sleep_s: float, total: int, counter, started, stop, stamps: list[float]) -> None:
    from client import ShareConsumer

    first = True
    with ShareConsumer(config) as consumer:
        consumer.subscribe([topic])
        while not stop.is_set():
            with counter.get_lock():
                if counter.value >= total:
                    break
            records = consumer.poll(0.5)
            for record in records:
                if sleep_s:
                    time.sleep(sleep_s)
                consumer.acknowledge(record)
                stamps.append(time.time())
            if records:
                if first:
                    first = False
                    with started.get_lock():
                        started.value += 1
                with counter.get_lock():
                    counter.value += len(records)
        consumer.commit_sync(timeout=30)
        stamps.append(-time.time())  # negative: when the final commit completed


def _consumer_thread(config: dict, topic: str, total: int, counter, started, stop, stamps: list[float]) -> None:
    from client import Consumer

    first = True
    with Consumer(config) as consumer:
        consumer.subscribe([topic])
        while not stop.is_set():
            with counter.get_lock():
                if counter.value >= total:
                    break
            records = consumer.poll(0.5)
            now = time.time()
            stamps.extend(now for _ in records)
            if records:
                if first:
                    first = False
                    with started.get_lock():
                        started.value += 1
                with counter.get_lock():
                    counter.value += len(records)


def _worker(kind: str, config: dict, topic: str, threads: int, sleep_s: float, total: int, counter, started, stop, out) -> None:
    """One process running ``threads`` consumers; reports every record's completion time."""
    per_thread: list[list[float]] = [[] for _ in range(threads)]
    runners = []
    for index in range(threads):
        if kind == "share":
            args = (config, topic, sleep_s, total, counter, started, stop, per_thread[index])
            runners.append(threading.Thread(target=_share_thread, args=args))
        else:
            args = (config, topic, total, counter, started, stop, per_thread[index])
            runners.append(threading.Thread(target=_consumer_thread, args=args))
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    times = os.times()
    # Last entry: this process's CPU seconds (negative-free marker list), to show what the clients cost.
    out.put(per_thread + [[float("nan"), times.user + times.system]])


def run_group(
    bootstrap: str,
    kind: str,
    group: str,
    topic: str,
    consumers: int,
    total: int,
    config: dict,
    sleep_s: float = 0.0,
    window_s: float | None = None,
    timeout_s: float = 300.0,
) -> list[list[float]]:
    """Run ``consumers`` members of a share or consumer group; per-consumer completion stamps.

    Without ``window_s`` the members stop once ``total`` records were received.
    With it, the run stops ``window_s`` + 1 s after every member received a record.
    """
    if kind == "share":
        from client import Admin

        with Admin({"bootstrap.servers": bootstrap}) as admin:
            admin.alter_group_configs(group, set={"share.auto.offset.reset": "earliest"})
    config = {"bootstrap.servers": bootstrap, "group.id": group, **config}
    counter = SPAWN.Value("q", 0)
    started = SPAWN.Value("i", 0)
    stop = SPAWN.Event()
    out = SPAWN.Queue()
    processes = math.ceil(consumers / THREADS_PER_PROCESS)
    sizes = [consumers // processes + (1 if i < consumers % processes else 0) for i in range(processes)]
    workers = [
        SPAWN.Process(target=_worker, args=(kind, config, topic, size, sleep_s, total, counter, started, stop, out))
        for size in sizes
    ]
    for worker in workers:
        worker.start()
    window_start = None
    try:
        deadline = time.monotonic() + timeout_s
        if window_s is not None:
            while started.value < consumers and time.monotonic() < deadline:
                time.sleep(0.05)
            if started.value < consumers:
                print(f"    only {started.value}/{consumers} consumers received a record within {timeout_s:.0f} s", flush=True)
            window_start = time.time()
            time.sleep(window_s + 1.0)
            stop.set()
        results: list[list[float]] = []
        client_cpu = 0.0
        for _ in workers:
            got = out.get(timeout=max(10.0, deadline - time.monotonic() + 60))
            client_cpu += got[-1][1]
            results.extend(got[:-1])
        run_group.last_client_cpu_s = client_cpu  # type: ignore[attr-defined]
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
                worker.join()
    if window_start is not None:
        results.append([window_start])  # last list: the window start (see scaling())
    return results


def throughput(stamps: list[list[float]], expected: int) -> tuple[float, int]:
    """Records/s from first to last completion over all consumers; and records seen."""
    done = [s for per in stamps for s in per if s > 0]
    if len(done) < 2:
        return 0.0, len(done)
    return len(done) / (max(done) - min(done)), len(done)


# ---------------------------------------------------------------- parts


def part_a(quick: bool, runs: int) -> dict[str, dict[int, list[float]]]:
    total = 20_000 if quick else 100_000
    ks = (1, 2) if quick else (1, 2, 3, 4)
    results: dict[str, dict[int, list[float]]] = {"share": {}, "consumer": {}}
    print(f"(a) overhead: 1 node, 1 partition, {total:,} records of 100 B; runs={runs}")
    with bench_cluster(1) as cluster:
        cluster.create_topic("sa", 1, 1)
        produce_all(cluster.bootstrap, "sa", total, 100)
        share_config = {"share.acknowledgement.mode": "explicit", "max.poll.records": 500}
        consumer_config = {"auto.offset.reset": "earliest", "max.poll.records": 500, "enable.auto.commit": False}
        for run in range(runs):
            for k in ks:
                for kind, config in (("share", share_config), ("consumer", consumer_config)):
                    stamps = run_group(cluster.bootstrap, kind, f"a-{kind}-{k}-{run}", "sa", k, total, config)
                    rate, seen = throughput(stamps, total)
                    results[kind].setdefault(k, []).append(rate)
                    print(f"  run {run + 1} {kind:8s} k={k}: {rate:,.0f} records/s ({seen:,} records)", flush=True)
    print()
    print("| consumers | share group (ACCEPT each) records/s | consumer group records/s | consumer/share |")
    print("|---|---|---|---|")
    for k in ks:
        share, group = results["share"][k], results["consumer"][k]
        print(f"| {k} | {fmt(share)} | {fmt(group)} | {statistics.median(group) / statistics.median(share):.2f}x |")
    worst = max(statistics.median(results["consumer"][k]) / statistics.median(results["share"][k]) for k in ks)
    summary(BENCH, "(a) consumer-group / share throughput, worst k", worst, "x", 1.5, higher_is_better=False)
    return results


def part_b(quick: bool, window_s: float) -> dict[int, float]:
    ks = (1, 4, 16, 64) if quick else (1, 2, 4, 8, 16, 32, 64)
    needed = int(max(ks) * 100 * (window_s + 20))
    print(f"(b) scaling: 1 node, 1 partition, 10 ms per record, record_limit, max.poll.records {POLL_RECORDS_B}, window {window_s:.0f} s")
    rates: dict[int, float] = {}
    with bench_cluster(1) as cluster:
        cluster.create_topic("sb", 1, 1)
        produce_all(cluster.bootstrap, "sb", needed, 100)
        config = {"share.acknowledgement.mode": "explicit", "share.acquire.mode": "record_limit", "max.poll.records": POLL_RECORDS_B}
        node_pid = cluster.pid(1)
        for k in ks:
            node_cpu_before, wall_before = cpu_seconds(node_pid), time.monotonic()
            stamps = run_group(cluster.bootstrap, "share", f"b-{k}", "sb", k, needed, config, sleep_s=0.010, window_s=window_s)
            wall = time.monotonic() - wall_before
            node_cores = (cpu_seconds(node_pid) - node_cpu_before) / wall
            client_cores = run_group.last_client_cpu_s / wall  # type: ignore[attr-defined]
            start = stamps.pop()[0]
            done = [s for per in stamps for s in per if s > 0]
            in_window = sum(1 for s in done if start <= s < start + window_s)
            rates[k] = in_window / window_s
            print(
                f"  k={k:2d}: {rates[k]:,.0f} records/s, ideal {k * 100:,}, {rates[k] / (k * 100):.2f} of ideal; "
                f"CPU over the whole run (incl. start-up): node {node_cores:.2f} cores, consumer processes {client_cores:.2f} cores",
                flush=True,
            )
    print()
    print("| consumers | processes x threads | records/s (window) | ideal | fraction of ideal |")
    print("|---|---|---|---|---|")
    for k, rate in rates.items():
        processes = math.ceil(k / THREADS_PER_PROCESS)
        print(f"| {k} | {processes} x {math.ceil(k / processes)} | {rate:,.0f} | {k * 100:,} | {rate / (k * 100):.2f} |")
    worst = min(rate / (k * 100) for k, rate in rates.items())
    summary(BENCH, "(b) worst fraction of ideal (k x 100/s), 1..64 consumers", worst, "fraction", 0.9)
    return rates


def part_c(quick: bool, runs: int) -> None:
    total = 20_000 if quick else 60_000
    print(f"(c) durable acks: 1 consumer, {total:,} records, explicit ACCEPT; runs={runs}")
    config = {"share.acknowledgement.mode": "explicit", "max.poll.records": 500}
    rates: dict[int, list[float]] = {}
    for nodes in (1, 3):
        rf = nodes
        with bench_cluster(nodes) as cluster:
            cluster.create_topic("sc", 1, rf, configs={"min.insync.replicas": "2"} if rf == 3 else None)
            produce_all(cluster.bootstrap, "sc", total, 100, acks="all")
            for run in range(runs):
                stamps = run_group(cluster.bootstrap, "share", f"c-{nodes}-{run}", "sc", 1, total, config)
                done = [s for per in stamps for s in per if s > 0]
                committed = [-s for per in stamps for s in per if s < 0]
                rate = len(done) / (max(committed) - min(done))
                rates.setdefault(nodes, []).append(rate)
                print(f"  {nodes} node(s) run {run + 1}: {rate:,.0f} records acknowledged/s ({len(done):,} records)", flush=True)
    print()
    print("| cluster | records acknowledged/s (first receipt → final commit) |")
    print("|---|---|")
    for nodes, values in rates.items():
        print(f"| {nodes} node(s), RF {nodes} | {fmt(values)} |")
    ratio = statistics.median(rates[3]) / statistics.median(rates[1])
    print(f"ratio 3 nodes RF 3 / 1 node: {ratio:.2f}")
    summary(BENCH, "(c) ack throughput 3 nodes RF3 / 1 node", ratio, "ratio", 0.5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}] (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--part", default="a,b,c", help="comma-separated subset of a,b,c")
    parser.add_argument("--runs", type=int, default=None, help="runs of (a) and (c) (default 3, quick 1)")
    parser.add_argument("--poll-records", type=int, default=None, help="(b) max.poll.records (default 20)")
    parser.add_argument("--window", type=float, default=None, help="(b) steady-state window in seconds (default 10, quick 5)")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    window = args.window or (5.0 if args.quick else 10.0)
    parts = set(args.part.split(","))
    if args.poll_records:
        global POLL_RECORDS_B
        POLL_RECORDS_B = args.poll_records
    print(f"bench_share: {machine_line()}")
    if "a" in parts:
        part_a(args.quick, runs)
    if "b" in parts:
        part_b(args.quick, window)
    if "c" in parts:
        part_c(args.quick, runs)


if __name__ == "__main__":
    main()
