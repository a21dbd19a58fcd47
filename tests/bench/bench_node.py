"""Benchmark: one node (RF 1) — produce and fetch throughput, end-to-end latency.

Run from the repository root: ``.venv/bin/python tests/bench/bench_node.py [--quick] [--runs N]``.

What is measured (a fresh single-node cluster, topics of RF 1, all on 127.0.0.1):

1. **Produce, client library.** ``client.Producer`` with acks=1, linger.ms=5,
   batch.size 64 KiB (the defaults but acks), no idempotence, sending
   ``count`` records of 100 B or 1 KiB. Variants: 1 process → 1 partition,
   1 process → 4 partitions (the producer keeps one batch in flight per
   partition, so more partitions pipeline more), and 2 processes → 2
   partitions each (two client GILs). Time runs from the first ``send`` to
   the end of ``flush`` in every worker (wall clock, earliest start to latest
   end), after each worker has warmed up its metadata and channel.
2. **Produce, raw gRPC** (the node's ceiling without the client's per-record
   Python work): one batch of 1,000 records is built once and sent again and
   again with acks=1 by a ``grpc.aio`` client keeping 8 requests in flight.
3. **Fetch**: ``client.Consumer`` (assign + seek to 0, max.poll.records 10,000)
   reading the 100 B topic written by (1) back to its end.
4. **End-to-end latency** at a fixed 1,000 records/s for ``seconds``: the
   producer (this process) stamps ``time.time_ns()`` into each value; a
   consumer in another process records receipt − stamp after ``poll``
   returns it. Same clock, same machine.

Prints tables and SUMMARY lines (see common.py). Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.common import SPAWN, bench_cluster, machine_line, percentile, spread, summary, value_of  # noqa: E402

BENCH = "node"
AIM_RECORDS_S = 200_000


# ---------------------------------------------------------------- produce with the client


def _producer_worker(bootstrap: str, topic: str, partitions: list[int], count: int, size: int, ready, start, out) -> None:
    """One producer process: warm up, wait for the start signal, send ``count`` records, report times."""
    from client import Producer

    config = {"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 5, "enable.idempotence": False}
    value = value_of(size)
    with Producer(config) as producer:
        for partition in partitions:
            producer.send(topic, value, partition=partition).result(timeout=30)
        ready.release()
        start.wait()
        began = time.time()
        count_partitions = len(partitions)
        send = producer.send
        for index in range(count):
            send(topic, value, partition=partitions[index % count_partitions])
        producer.flush()
        ended = time.time()
    out.put((began, ended, count))


def produce_client(bootstrap: str, topic: str, processes: int, partitions: int, count: int, size: int) -> float:
    """Records/s of ``processes`` producer processes writing ``count`` records in total."""
    ready = SPAWN.Semaphore(0)
    start = SPAWN.Event()
    out = SPAWN.Queue()
    per_process = [list(range(p, partitions, processes)) for p in range(processes)]
    workers = [
        SPAWN.Process(target=_producer_worker, args=(bootstrap, topic, parts, count // processes, size, ready, start, out))
        for parts in per_process
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            if not ready.acquire(timeout=60):
                raise RuntimeError("a producer worker did not start")
        start.set()
        results = [out.get(timeout=600) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
                worker.join()
    began = min(r[0] for r in results)
    ended = max(r[1] for r in results)
    return sum(r[2] for r in results) / (ended - began)


# ---------------------------------------------------------------- produce with raw gRPC


def _raw_worker(address: str, topic: str, batches: int, in_flight: int, size: int, out, acks: int = 1) -> None:
    import grpc

    from proto import shoal_pb2, shoal_pb2_grpc
    from proto.batch import build_batch

    now_ms = int(time.time() * 1000)
    records = [(None, value_of(size, i), (), now_ms) for i in range(1000)]
    payload = build_batch(records)

    async def run() -> tuple[float, float]:
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        async with grpc.aio.insecure_channel(address, options=options) as channel:
            stub = shoal_pb2_grpc.BrokerStub(channel)
            request = shoal_pb2.ProduceRequest(
                acks=acks, timeout_ms=30_000, partitions=[shoal_pb2.PartitionRecords(topic=topic, partition=0, records=payload)]
            )
            await stub.Produce(request)  # warm-up
            remaining = batches

            async def loop() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    response = await stub.Produce(request)
                    if response.results[0].error_code:
                        raise RuntimeError(f"produce error {response.results[0]}")

            began = time.time()
            await asyncio.gather(*(loop() for _ in range(in_flight)))
            return began, time.time()

    began, ended = asyncio.run(run())
    out.put((began, ended, batches * 1000, len(payload)))


def produce_raw(address: str, topic: str, batches: int, size: int, in_flight: int = 8) -> tuple[float, float]:
    """(records/s, MB/s of batch bytes) for pre-built 1,000-record batches sent by a grpc.aio client."""
    out = SPAWN.Queue()
    worker = SPAWN.Process(target=_raw_worker, args=(address, topic, batches, in_flight, size, out))
    worker.start()
    try:
        began, ended, records, batch_bytes = out.get(timeout=600)
    finally:
        worker.join(timeout=60)
    seconds = ended - began
    return records / seconds, batches * batch_bytes / seconds / 1e6


# ---------------------------------------------------------------- fetch


def fetch_all(bootstrap: str, topic: str, expected: int) -> float:
    """Records/s of one Consumer reading ``expected`` records from offset 0 of partition 0."""
    from client import Consumer, TopicPartition

    config = {"bootstrap.servers": bootstrap, "max.poll.records": 10_000, "fetch.max.wait.ms": 100}
    with Consumer(config) as consumer:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        got = 0
        began = time.perf_counter()
        while got < expected:
            got += len(consumer.poll(1.0))
            if time.perf_counter() - began > 300:
                raise RuntimeError(f"fetch stalled at {got}/{expected}")
        return got / (time.perf_counter() - began)


# ---------------------------------------------------------------- end-to-end latency


def _latency_consumer(bootstrap: str, topic: str, expected: int, ready, out) -> None:
    from client import Consumer, TopicPartition

    config = {"bootstrap.servers": bootstrap, "max.poll.records": 10_000, "fetch.max.wait.ms": 500}
    latencies: list[float] = []
    with Consumer(config) as consumer:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_end([tp])
        consumer.poll(0.1)  # resolve the position before the producer starts
        ready.release()
        deadline = time.monotonic() + 120
        while len(latencies) < expected and time.monotonic() < deadline:
            records = consumer.poll(1.0)
            received = time.time_ns()
            for record in records:
                latencies.append((received - struct.unpack_from(">q", record.value)[0]) / 1e6)
    out.put(latencies)


def e2e_latency(bootstrap: str, topic: str, rate: int, seconds: float, linger_ms: int) -> list[float]:
    """Produce ``rate`` records/s for ``seconds`` with acks=1; return receipt − send latencies (ms)."""
    from client import Producer

    expected = int(rate * seconds)
    ready = SPAWN.Semaphore(0)
    out = SPAWN.Queue()
    consumer = SPAWN.Process(target=_latency_consumer, args=(bootstrap, topic, expected, ready, out))
    consumer.start()
    try:
        if not ready.acquire(timeout=60):
            raise RuntimeError("the latency consumer did not start")
        config = {"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": linger_ms, "enable.idempotence": False}
        padding = value_of(92)
        with Producer(config) as producer:
            producer.send(topic, struct.pack(">q", time.time_ns()) + padding, partition=0).result(timeout=30)
            began = time.perf_counter()
            for index in range(expected):
                target = began + index / rate
                delay = target - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                producer.send(topic, struct.pack(">q", time.time_ns()) + padding, partition=0)
            producer.flush()
        latencies = out.get(timeout=180)
    finally:
        consumer.join(timeout=60)
        if consumer.is_alive():
            consumer.kill()
            consumer.join()
    # The warm-up record sent before the consumer's first poll may be counted; drop nothing else.
    return latencies


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer records, one run")
    parser.add_argument("--runs", type=int, default=None, help="repeats of each throughput figure (default 3, quick 1)")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    count_100 = 100_000 if args.quick else 300_000
    count_1k = 30_000 if args.quick else 100_000
    raw_batches = 100 if args.quick else 400
    latency_seconds = 5 if args.quick else 15
    print(f"bench_node: {machine_line()}; runs={runs}")

    with bench_cluster(1) as cluster:
        bootstrap = cluster.bootstrap
        cluster.create_topic("p1", 1, 1)
        cluster.create_topic("p4", 4, 1)
        cluster.create_topic("p1k", 1, 1)
        cluster.create_topic("p1k4", 4, 1)
        cluster.create_topic("raw", 1, 1)
        cluster.create_topic("lat", 1, 1)

        rows: list[tuple[str, list[float], int]] = []
        cases = [
            ("client 1 proc -> 1 partition", "p1", 1, 1, count_100, 100),
            ("client 1 proc -> 4 partitions", "p4", 1, 4, count_100, 100),
            ("client 2 procs -> 4 partitions", "p4", 2, 4, count_100, 100),
            ("client 1 proc -> 1 partition", "p1k", 1, 1, count_1k, 1024),
            ("client 1 proc -> 4 partitions", "p1k4", 1, 4, count_1k, 1024),
        ]
        for name, topic, processes, partitions, count, size in cases:
            figures = [produce_client(bootstrap, topic, processes, partitions, count, size) for _ in range(runs)]
            rows.append((name, figures, size))
            print(f"  produce {size:>5} B {name}: {spread(figures)} records/s", flush=True)
        raw = [produce_raw(cluster.address(1), "raw", raw_batches, 100) for _ in range(runs)]
        print(f"  produce   100 B raw gRPC aio, 8 in flight: {spread([r[0] for r in raw])} records/s", flush=True)

        stored_100 = runs * (count_100 + 1)  # p1 holds every run's records plus the warm-up record
        fetch = [fetch_all(bootstrap, "p1", stored_100) for _ in range(runs)]
        print(f"  fetch 100 B, {stored_100:,} records: {spread(fetch)} records/s", flush=True)

        latency_rows = []
        for linger in (0, 5):
            latencies = e2e_latency(bootstrap, "lat", 1000, latency_seconds, linger)
            latency_rows.append((linger, latencies))
            print(
                f"  e2e latency linger.ms={linger}: n={len(latencies)} p50 {percentile(latencies, 0.5):.2f} ms "
                f"p99 {percentile(latencies, 0.99):.2f} ms max {max(latencies):.2f} ms",
                flush=True,
            )

    print()
    print("| case | value size | records/s median [min-max] (n) | MB/s (values) |")
    print("|---|---|---|---|")
    for name, figures, size in rows:
        print(f"| produce acks=1, {name} | {size} B | {spread(figures)} | {statistics.median(figures) * size / 1e6:.1f} |")
    raw_rec = [r[0] for r in raw]
    print(f"| produce acks=1, raw gRPC aio (pre-built 1,000-record batches, 8 in flight) | 100 B | {spread(raw_rec)} | "
          f"{statistics.median(raw_rec) * 100 / 1e6:.1f} |")
    print(f"| fetch, client Consumer, 1 partition | 100 B | {spread(fetch)} | {statistics.median(fetch) * 100 / 1e6:.1f} |")
    print()
    print("| e2e latency at 1,000 records/s, acks=1 | records | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    for linger, latencies in latency_rows:
        print(f"| linger.ms={linger} | {len(latencies)} | {percentile(latencies, 0.5):.2f} | "
              f"{percentile(latencies, 0.99):.2f} | {max(latencies):.2f} |")

    best_client = max(statistics.median(f) for name, f, size in rows if size == 100)
    summary(BENCH, "produce 100 B acks=1, best client case (records/s)", best_client, "records/s", AIM_RECORDS_S)
    summary(BENCH, "produce 100 B acks=1, raw gRPC (records/s)", statistics.median(raw_rec), "records/s", AIM_RECORDS_S)
    summary(BENCH, "fetch 100 B, client Consumer (records/s)", statistics.median(fetch), "records/s", AIM_RECORDS_S)
    p50_0 = percentile(latency_rows[0][1], 0.5)
    p99_0 = percentile(latency_rows[0][1], 0.99)
    summary(BENCH, "e2e latency p50 @1k/s linger 0 (ms)", p50_0, "ms", note=f"p99 {p99_0:.2f} ms")


if __name__ == "__main__":
    main()
