"""Benchmark: produce throughput with replication (3 nodes, RF 3, acks=all) against RF 1, acks=1.

Run from the repository root: ``.venv/bin/python tests/bench/bench_replication.py [--quick] [--runs N]``.

One 3-node cluster; two topics of one partition each: ``rf1`` (replication
factor 1) and ``rf3`` (replication factor 3, min.insync.replicas 2). Both
cases run in the same cluster and alternate run by run (rf1, rf3, rf1, rf3,
...) so that drift of the shared machine hits both alike. Two producers:

* **client**: ``client.Producer`` in a worker process, 100 B records, linger.ms 5,
  batch.size 64 KiB, idempotence off in both cases so that only acks and the
  replication factor differ;
* **raw gRPC**: pre-built 1,000-record batches (100 B values) sent by a
  ``grpc.aio`` client with 8 requests in flight — the brokers' own ceiling,
  without the client's per-record Python cost.

With acks=all a produce completes when the ISR's followers have fetched the
batch (high watermark); followers pull with one ReplicaFetch stream per pair
of nodes. All three nodes and the client share the machine's 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_node import _raw_worker  # noqa: E402
from tests.bench.common import SPAWN, bench_cluster, machine_line, spread, summary, value_of  # noqa: E402

BENCH = "replication"
AIM_RATIO = 0.5


def _client_worker(bootstrap: str, topic: str, acks: str, count: int, out) -> None:
    from client import Producer

    config = {"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 5, "enable.idempotence": False}
    value = value_of(100)
    with Producer(config) as producer:
        producer.send(topic, value, partition=0).result(timeout=30)
        began = time.time()
        for _ in range(count):
            producer.send(topic, value, partition=0)
        producer.flush()
        out.put(count / (time.time() - began))


def client_rate(bootstrap: str, topic: str, acks: str, count: int) -> float:
    out = SPAWN.Queue()
    worker = SPAWN.Process(target=_client_worker, args=(bootstrap, topic, acks, count, out))
    worker.start()
    try:
        return out.get(timeout=600)
    finally:
        worker.join(timeout=60)


def raw_rate(address: str, topic: str, acks: int, batches: int) -> float:
    out = SPAWN.Queue()
    worker = SPAWN.Process(target=_raw_worker, args=(address, topic, batches, 8, 100, out), kwargs={"acks": acks})
    worker.start()
    try:
        began, ended, records, _ = out.get(timeout=600)
    finally:
        worker.join(timeout=60)
    return records / (ended - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=None, help="alternating runs per case (default 3, quick 1)")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    count = 60_000 if args.quick else 200_000
    batches = 60 if args.quick else 200
    print(f"bench_replication: {machine_line()}; runs={runs}")

    with bench_cluster(3) as cluster:
        cluster.create_topic("rf1", 1, 1)
        cluster.create_topic("rf3", 1, 3, configs={"min.insync.replicas": "2"})
        leaders = {topic: cluster.leader_of(topic, 0) for topic in ("rf1", "rf3")}
        print(f"  leaders: {leaders}")
        results: dict[str, list[float]] = {"client rf1": [], "client rf3": [], "raw rf1": [], "raw rf3": []}
        for run in range(runs):
            for topic, acks in (("rf1", "1"), ("rf3", "all")):
                rate = client_rate(cluster.bootstrap, topic, acks, count)
                results[f"client {topic}"].append(rate)
                print(f"  run {run + 1} client {topic} acks={acks}: {rate:,.0f} records/s", flush=True)
            for topic, acks in (("rf1", 1), ("rf3", -1)):
                rate = raw_rate(cluster.address(leaders[topic]), topic, acks, batches)
                results[f"raw {topic}"].append(rate)
                print(f"  run {run + 1} raw {topic} acks={acks}: {rate:,.0f} records/s", flush=True)

    print()
    print("| producer | RF 1, acks=1 records/s | RF 3, acks=all records/s | ratio (median) |")
    print("|---|---|---|---|")
    ratios = {}
    for kind in ("client", "raw"):
        rf1, rf3 = results[f"{kind} rf1"], results[f"{kind} rf3"]
        ratios[kind] = statistics.median(rf3) / statistics.median(rf1)
        label = "client.Producer, 100 B" if kind == "client" else "raw gRPC aio, 1,000 x 100 B batches, 8 in flight"
        print(f"| {label} | {spread(rf1)} | {spread(rf3)} | {ratios[kind]:.2f} |")
    summary(BENCH, "RF3 acks=all / RF1 acks=1, client producer", ratios["client"], "ratio", AIM_RATIO)
    summary(BENCH, "RF3 acks=all / RF1 acks=1, raw gRPC", ratios["raw"], "ratio", AIM_RATIO)
    summary(BENCH, "RF3 acks=all raw gRPC (records/s)", statistics.median(results["raw rf3"]), "records/s")


if __name__ == "__main__":
    main()
