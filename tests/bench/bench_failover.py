"""Benchmark: failover time after SIGKILL of a partition leader (3 nodes, RF 3).

Run from the repository root: ``.venv/bin/python tests/bench/bench_failover.py [--quick] [--trials N]``.

Two measurements, each over ``trials`` trials (default 10) in one 3-node
cluster; the killed node is restarted between trials and the next trial waits
until every partition (internal ones included) has its full ISR again, so
every trial starts from a healthy cluster.

* **produce**: topic ``fo`` (1 partition, RF 3, min.insync.replicas 2). A warm
  ``client.Producer`` (acks=all, linger.ms 0, retry.backoff.ms 50,
  retry.backoff.max.ms 250) has just had a record acknowledged. t0 = just
  before SIGKILL of the partition leader; one record is then sent and the
  figure is the time until its future completes (the client retries until the
  new leader accepts it). Alongside, the time until the metadata of a
  surviving node names a new leader is recorded: the split between detection
  + election (broker.session.timeout.ms 2000 by default) and client discovery.
* **share**: topic ``sfo`` (1 partition, RF 3) and a share group with one
  ``ShareConsumer`` (explicit acknowledgement, committed after every poll).
  Before each trial the consumer has drained and acknowledged everything;
  then 20 records are produced (acks=all) without polling, t0 = just before
  SIGKILL of the share-partition leader (= the topic partition's leader), and
  the figure is the time until ``poll`` first returns a record — which only
  the new leader can hand out, after loading the share state from the
  replicated state topic.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.common import bench_cluster, machine_line, summary  # noqa: E402
from tests.harness import Cluster, wait_until  # noqa: E402

BENCH = "failover"
AIM_S = 3.0


def wait_full_isr(cluster: Cluster, timeout_s: float = 60.0) -> None:
    """Every partition of every topic (internal too) has a leader and all its replicas in the ISR."""
    from proto import shoal_pb2

    def healthy() -> bool:
        response = cluster.any_call(lambda stub: stub.Metadata(shoal_pb2.MetadataRequest(include_internal=True), timeout=2))
        for topic in response.topics:
            for partition in topic.partitions:
                if partition.leader < 0 or set(partition.isr) != set(partition.replicas):
                    return False
        return True

    wait_until(healthy, timeout_s, "full ISR on every partition", interval_s=0.1)


def new_leader_seen(cluster: Cluster, topic: str, old: int, t0: float, stop: threading.Event, out: list[float]) -> None:
    """Poll a surviving node's metadata every 20 ms until it names a leader other than ``old``."""
    survivors = [n for n in cluster.node_ids if n != old]
    while not stop.is_set():
        for node_id in survivors:
            try:
                metadata = cluster.partition_metadata(topic, 0, node_id=node_id)
            except Exception:  # a node may be busy or answer late; try the next one
                continue
            if metadata.leader >= 0 and metadata.leader != old:
                out.append(time.monotonic() - t0)
                return
        time.sleep(0.02)


def produce_trials(cluster: Cluster, trials: int) -> tuple[list[float], list[float]]:
    from client import Producer

    config = {
        "bootstrap.servers": cluster.bootstrap,
        "acks": "all",
        "linger.ms": 0,
        "retry.backoff.ms": 50,
        "retry.backoff.max.ms": 250,
    }
    acked: list[float] = []
    elected: list[float] = []
    with Producer(config) as producer:
        for trial in range(trials):
            wait_full_isr(cluster)
            producer.send("fo", b"warm", partition=0).result(timeout=30)
            leader = cluster.leader_of("fo", 0)
            seen: list[float] = []
            stop = threading.Event()
            t0 = time.monotonic()
            cluster.kill(leader)
            watcher = threading.Thread(target=new_leader_seen, args=(cluster, "fo", leader, t0, stop, seen), daemon=True)
            watcher.start()
            metadata = producer.send("fo", f"trial {trial}".encode(), partition=0).result(timeout=60)
            took = time.monotonic() - t0
            watcher.join(timeout=30)
            stop.set()
            acked.append(took)
            if seen:
                elected.append(seen[0])
            print(
                f"  produce trial {trial + 1}: killed node {leader}; new leader in metadata after "
                f"{seen[0] if seen else float('nan'):.2f} s, first ack after {took:.2f} s (offset {metadata.offset})",
                flush=True,
            )
            cluster.restart(leader)
    return acked, elected


def share_trials(cluster: Cluster, trials: int) -> list[float]:
    from client import Admin, Producer, ShareConsumer

    with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
        admin.alter_group_configs("fo-share", set={"share.auto.offset.reset": "earliest"})
    consumer_config = {
        "bootstrap.servers": cluster.bootstrap,
        "group.id": "fo-share",
        "share.acknowledgement.mode": "explicit",
        "retry.backoff.ms": 50,
        "retry.backoff.max.ms": 250,
        "fetch.max.wait.ms": 200,
    }
    producer_config = {"bootstrap.servers": cluster.bootstrap, "acks": "all", "linger.ms": 0}
    times: list[float] = []
    per_trial = 20
    with Producer(producer_config) as producer, ShareConsumer(consumer_config) as consumer:
        consumer.subscribe(["sfo"])

        def drain(expected: int, timeout_s: float) -> tuple[int, float | None]:
            """Poll, acknowledge and commit until ``expected`` records arrived; (count, time of first)."""
            got, first = 0, None
            deadline = time.monotonic() + timeout_s
            while got < expected and time.monotonic() < deadline:
                records = consumer.poll(0.5)
                if records and first is None:
                    first = time.monotonic()
                for record in records:
                    consumer.acknowledge(record)
                got += len(records)
                if records:
                    consumer.commit_sync(timeout=30)
            return got, first

        # Warm up: the consumer joins, the share partition initialises, one delivery round trip.
        for index in range(per_trial):
            producer.send("sfo", f"warm {index}".encode(), partition=0)
        producer.flush()
        got, _ = drain(per_trial, 60)
        if got < per_trial:
            raise RuntimeError(f"share warm-up received {got}/{per_trial} records")

        for trial in range(trials):
            wait_full_isr(cluster)
            for index in range(per_trial):
                producer.send("sfo", f"trial {trial} record {index}".encode(), partition=0)
            producer.flush()
            leader = cluster.leader_of("sfo", 0)
            t0 = time.monotonic()
            cluster.kill(leader)
            got, first = drain(per_trial, 60)
            if first is None:
                raise RuntimeError(f"share trial {trial + 1}: no record within 60 s of the kill")
            times.append(first - t0)
            print(
                f"  share trial {trial + 1}: killed node {leader}; first record from the new leader after "
                f"{first - t0:.2f} s ({got}/{per_trial} records this trial)",
                flush=True,
            )
            cluster.restart(leader)
    return times


def describe(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s, min {min(values):.2f} s, max {max(values):.2f} s (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--trials", type=int, default=None, help="trials per measurement (default 10, quick 3)")
    args = parser.parse_args()
    trials = args.trials or (3 if args.quick else 10)
    print(f"bench_failover: {machine_line()}; trials={trials}")

    with bench_cluster(3) as cluster:
        cluster.create_topic("fo", 1, 3, configs={"min.insync.replicas": "2"})
        cluster.create_topic("sfo", 1, 3, configs={"min.insync.replicas": "2"})
        acked, elected = produce_trials(cluster, trials)
        shared = share_trials(cluster, trials)

    print()
    print("| measurement (SIGKILL of the leader at t0) | median s | min s | max s | trials |")
    print("|---|---|---|---|---|")
    print(f"| new leader visible in a survivor's metadata | {statistics.median(elected):.2f} | {min(elected):.2f} | {max(elected):.2f} | {len(elected)} |")
    print(f"| first acknowledged produce (acks=all) on the new leader | {statistics.median(acked):.2f} | {min(acked):.2f} | {max(acked):.2f} | {len(acked)} |")
    print(f"| first record delivered by the new share-partition leader | {statistics.median(shared):.2f} | {min(shared):.2f} | {max(shared):.2f} | {len(shared)} |")
    summary(BENCH, "produce failover median (s)", statistics.median(acked), "s", AIM_S, note=f"max {max(acked):.2f} s", higher_is_better=False)
    summary(BENCH, "share failover median (s)", statistics.median(shared), "s", AIM_S, note=f"max {max(shared):.2f} s", higher_is_better=False)


if __name__ == "__main__":
    main()
