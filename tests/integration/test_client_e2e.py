"""Producer, Consumer and Admin against real node processes (tests/harness.py)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import Admin, Consumer, NewTopic, Producer, TopicPartition
from client.errors import (
    InvalidPartitionsError,
    KafkaTimeoutError,
    RecordDeserializationError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from client.partitioner import partition_for_key
from client.types import OffsetSpec
from tests.harness import Cluster, start_cluster, wait_until

pytestmark = [pytest.mark.multiprocess, pytest.mark.xdist_group("cluster")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_cluster(3, Path(tmp_path_factory.mktemp("client-e2e"))) as running:
        yield running


def _topic(admin: Admin, partitions: int = 2, **config: str) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(name, partitions, 3, config)])[name].result()
    return name


def _read_all(bootstrap: str, topic: str, partitions: int, expected: int, timeout_s: float = 20.0) -> list:
    with Consumer({"bootstrap.servers": bootstrap}) as consumer:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        consumer.seek_to_beginning()
        got: list = []
        deadline = time.monotonic() + timeout_s
        while len(got) < expected and time.monotonic() < deadline:
            got += consumer.poll(0.5)
        # One more poll proves nothing beyond `expected` is there.
        got += consumer.poll(0.3)
        return got


def test_produce_consume_round_trip_with_keys_headers_and_partitions(cluster: Cluster) -> None:
    with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
        topic = _topic(admin, partitions=3)
    with Producer({"bootstrap.servers": cluster.bootstrap}) as producer:
        futures = [producer.send(topic, f"value-{i}", key=f"key-{i}", headers={"n": str(i)}) for i in range(300)]
        producer.flush(30)
        metadata = [f.result() for f in futures]
        stats = producer.metrics()
    for i, meta in enumerate(metadata):
        assert meta.partition == partition_for_key(f"key-{i}".encode(), 3)
    assert stats["record_send_total"] == 300 and stats["record_error_total"] == 0
    assert stats["batch_send_total"] < 300  # records were batched
    records = _read_all(cluster.bootstrap, topic, 3, 300)
    assert sorted(r.value for r in records) == sorted(f"value-{i}".encode() for i in range(300))
    by_offset = {(r.partition, r.offset): r for r in records}
    for i, meta in enumerate(metadata):
        record = by_offset[(meta.partition, meta.offset)]
        assert record.key == f"key-{i}".encode() and record.headers == [("n", str(i).encode())]


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
def test_compressed_batches_round_trip(cluster: Cluster, compression: str) -> None:
    with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
        topic = _topic(admin, partitions=1)
    payload = "shoal " * 200
    with Producer({"bootstrap.servers": cluster.bootstrap, "compression.type": compression, "linger.ms": 20}) as producer:
        for i in range(200):
            producer.send(topic, f"{i}:{payload}")
        producer.flush(30)
    records = _read_all(cluster.bootstrap, topic, 1, 200)
    assert [r.value for r in records] == [f"{i}:{payload}".encode() for i in range(200)]


def test_consumer_group_commits_and_resumes(cluster: Cluster) -> None:
    with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
        topic = _topic(admin, partitions=2)
    with Producer({"bootstrap.servers": cluster.bootstrap}) as producer:
        for i in range(40):
            producer.send(topic, str(i), key=str(i))
        producer.flush(30)
    group = f"g-{uuid.uuid4().hex[:6]}"
    config = {"bootstrap.servers": cluster.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
              "enable.auto.commit": False}
    with Consumer(config) as consumer:
        consumer.subscribe([topic])
        got: list = []
        deadline = time.monotonic() + 30
        while len(got) < 40 and time.monotonic() < deadline:
            got += consumer.poll(0.5)
        assert sorted(int(r.value) for r in got) == list(range(40))
        assert sorted(consumer.assignment()) == [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        consumer.commit_sync()
        committed = consumer.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        assert sum(committed.values()) == 40
    with Producer({"bootstrap.servers": cluster.bootstrap}) as producer:
        producer.send(topic, "40", key="40").result(30)
    with Consumer(config) as consumer:
        consumer.subscribe([topic])
        later: list = []
        deadline = time.monotonic() + 30
        while not later and time.monotonic() < deadline:
            later += consumer.poll(0.5)
        assert [r.value for r in later] == [b"40"]  # resumed from the committed offsets


def test_idempotent_producer_does_not_duplicate_across_leader_kill(cluster: Cluster) -> None:
    with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
        topic = _topic(admin, partitions=1)
    leader = cluster.leader_of(topic, 0)
    acked: list[int] = []
    stop = threading.Event()
    config = {"bootstrap.servers": cluster.bootstrap, "linger.ms": 2, "request.timeout.ms": 3000,
              "retry.backoff.ms": 50, "delivery.timeout.ms": 60000}
    with Producer(config) as producer:

        def run() -> None:
            i = 0
            while not stop.is_set():
                futures = [(n, producer.send(topic, str(n))) for n in range(i, i + 20)]
                for n, future in futures:
                    future.result(60)
                    acked.append(n)
                i += 20

        sender = threading.Thread(target=run)
        sender.start()
        wait_until(lambda: len(acked) >= 200, 30, "records before the kill")
        cluster.kill(leader)
        new_leader = cluster.leader_of(topic, 0, exclude=leader, timeout_s=30)
        count = len(acked)
        wait_until(lambda: len(acked) >= count + 200, 60, f"records acknowledged by the new leader {new_leader}")
        stop.set()
        sender.join(60)
        retries = producer.metrics()["record_retry_total"]
    cluster.start_node(leader)
    cluster.wait_node_ready(leader)
    records = _read_all(cluster.bootstrap, topic, 1, len(acked), timeout_s=30)
    values = [int(r.value) for r in records]
    assert len(values) == len(set(values)), f"duplicates after {retries} retried records"
    assert set(acked) <= set(values)
    assert values == sorted(values)  # one batch in flight per partition keeps the order


def test_admin_topics_offsets_and_cluster(cluster: Cluster) -> None:
    with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
        topic = _topic(admin, partitions=2, **{"retention.ms": "3600000"})
        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(topic, 2, 3)])[topic].result()
        with pytest.raises(InvalidPartitionsError):
            admin.create_topics([NewTopic("zero-partitions", 0, 3)])["zero-partitions"].result()
        assert topic in admin.list_topics()
        description = admin.describe_topics([topic])[topic].result()
        assert [p.partition for p in description.partitions] == [0, 1]
        assert all(len(p.replicas) == 3 for p in description.partitions)
        assert description.configs.get("retention.ms") == "3600000"
        admin.alter_topic_configs(topic, set={"retention.ms": "7200000"})
        assert admin.describe_topics([topic])[topic].result().configs["retention.ms"] == "7200000"
        with pytest.raises(UnknownTopicOrPartitionError):
            admin.describe_topics(["no-such-topic"])["no-such-topic"].result()

        with Producer({"bootstrap.servers": cluster.bootstrap}) as producer:
            # Recent timestamps (within retention.ms), 100 ms apart.
            base_ms = int(time.time() * 1000) - 60_000
            for i in range(10):
                producer.send(topic, str(i), partition=0, timestamp_ms=base_ms + 100 * i)
            producer.flush(30)
        tp = TopicPartition(topic, 0)
        # By timestamp: the first record at or after it, with that record's own timestamp (as Kafka).
        by_time = admin.list_offsets({tp: base_ms + 250})[tp].result()
        assert (by_time.offset, by_time.timestamp) == (3, base_ms + 300)
        assert admin.list_offsets({tp: base_ms + 10_000})[tp].result().offset == -1
        assert admin.list_offsets({tp: OffsetSpec.LATEST})[tp].result().offset == 10
        assert admin.list_offsets({tp: OffsetSpec.EARLIEST})[tp].result().offset == 0
        assert admin.delete_records({tp: 4})[tp].result().low_watermark == 4
        assert admin.list_offsets({tp: OffsetSpec.EARLIEST})[tp].result().offset == 4

        state = admin.describe_cluster()
        assert state.controller_id in cluster.node_ids
        assert sorted(b.node_id for b in state.brokers) == cluster.node_ids
        assert any(p.topic == topic for p in state.partitions)

        admin.delete_topics([topic])[topic].result()
        wait_until(lambda: topic not in admin.list_topics(), 15, "the topic to disappear")


def test_producer_to_unknown_topic_fails_typed(cluster: Cluster) -> None:
    with Producer({"bootstrap.servers": cluster.bootstrap, "max.block.ms": 1500}) as producer:
        with pytest.raises(KafkaTimeoutError, match="not present in metadata"):
            producer.send("never-created", b"x")
        with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
            topic = _topic(admin, partitions=1)
        with pytest.raises(UnknownTopicOrPartitionError, match="partition 5"):
            producer.send(topic, b"x", partition=5)


def test_consumer_deserializers_and_a_record_that_fails_them(cluster: Cluster) -> None:
    with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
        topic = _topic(admin, partitions=1)
    with Producer({"bootstrap.servers": cluster.bootstrap}) as producer:
        for i in range(6):
            producer.send(topic, "not-a-number" if i == 3 else str(i), key=f"k{i}", partition=0)
        producer.flush(30)

    def to_int(data: bytes | None) -> int:
        return int(data)  # ValueError on the bad record

    config = {"bootstrap.servers": cluster.bootstrap, "value.deserializer": to_int,
              "key.deserializer": lambda data: data.decode()}
    tp = TopicPartition(topic, 0)
    with Consumer(config) as consumer:
        consumer.assign([tp])
        consumer.seek_to_beginning()
        got: list = []
        # Records before the bad one come first; the error follows on a later poll.
        with pytest.raises(RecordDeserializationError) as info:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                got += consumer.poll(0.5)
        assert [(r.key, r.value) for r in got] == [("k0", 0), ("k1", 1), ("k2", 2)]
        assert (info.value.topic, info.value.partition, info.value.offset) == (topic, 0, 3)
        # The position stays on the bad record until the application moves past it.
        assert consumer.position(tp) == 3
        consumer.seek(tp, 4)
        rest = wait_until(lambda: consumer.poll(0.5), 20, "the records after the bad one")
        assert [(r.key, r.value) for r in rest] == [("k4", 4), ("k5", 5)]
