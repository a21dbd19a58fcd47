"""message.timestamp.type=LogAppendTime over real node processes (tests/harness.py).

A producer sends records stamped in 2001; on a LogAppendTime topic every
reader (Consumer, ShareConsumer, ListOffsets by timestamp) sees the leader's
append time instead, the producer's RecordMetadata carries the same time, and
a replica that becomes leader serves the very bytes the old leader stored. A
CreateTime topic keeps the producer's timestamps.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import Admin, Consumer, NewTopic, Producer, ShareConsumer, TopicPartition
from client.types import OffsetSpec
from proto import shoal_pb2
from tests.harness import Cluster, fetch, start_cluster, wait_until

pytestmark = [pytest.mark.multiprocess, pytest.mark.xdist_group("cluster")]

#: 2001-01-01T00:00:00Z.
YEAR_2001_MS = 978_307_200_000
COUNT = 30


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_cluster(3, Path(tmp_path_factory.mktemp("log-append-time"))) as running:
        yield running


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _create(cluster: Cluster, **config: str) -> str:
    topic = f"lat-{uuid.uuid4().hex[:8]}"
    with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
        admin.create_topics([NewTopic(topic, 1, 3, config)])[topic].result()
    cluster.leader_of(topic, 0)
    return topic


def _produce_old(cluster: Cluster, topic: str, count: int, compression: str = "none") -> list:
    config = {"bootstrap.servers": cluster.bootstrap, "linger.ms": 5, "compression.type": compression}
    with Producer(config) as producer:
        futures = [producer.send(topic, str(i), partition=0, timestamp_ms=YEAR_2001_MS + i) for i in range(count)]
        producer.flush(30)
        return [future.result(30) for future in futures]


def _consume(cluster: Cluster, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    with Consumer({"bootstrap.servers": cluster.bootstrap}) as consumer:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        got: list = []
        deadline = time.monotonic() + timeout_s
        while len(got) < expected and time.monotonic() < deadline:
            got += consumer.poll(0.5)
        return got


def _share_consume(cluster: Cluster, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    group = f"sg-{uuid.uuid4().hex[:8]}"
    with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
        admin.alter_group_configs(group, set={"share.auto.offset.reset": "earliest"})
    with ShareConsumer({"bootstrap.servers": cluster.bootstrap, "group.id": group}) as consumer:
        consumer.subscribe([topic])
        got: list = []
        deadline = time.monotonic() + timeout_s
        while len(got) < expected and time.monotonic() < deadline:
            got += consumer.poll(0.5)
        consumer.commit_sync()
        return got


def _offset_for(cluster: Cluster, topic: str, timestamp_ms: int) -> int:
    with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
        tp = TopicPartition(topic, 0)
        return admin.list_offsets({tp: OffsetSpec.for_timestamp(timestamp_ms)})[tp].result(15).offset


def _committed_bytes(cluster: Cluster, node_id: int, topic: str) -> bytes:
    data = fetch(cluster.broker(node_id), topic, 0, 0)
    assert data.error_code == shoal_pb2.NONE, shoal_pb2.ErrorCode.Name(data.error_code)
    return data.records


def test_log_append_time_topic_reports_the_brokers_append_time(cluster: Cluster) -> None:
    topic = _create(cluster, **{"message.timestamp.type": "LogAppendTime"})
    before_ms = _wall_ms()
    metadata = _produce_old(cluster, topic, COUNT, compression="lz4")
    after_ms = _wall_ms()
    assert [meta.offset for meta in metadata] == list(range(COUNT))
    assert all(before_ms <= meta.timestamp_ms <= after_ms for meta in metadata), metadata

    records = _consume(cluster, topic, COUNT)
    assert [record.value for record in records] == [str(i).encode() for i in range(COUNT)]
    assert [record.timestamp_ms for record in records] == [meta.timestamp_ms for meta in metadata]
    assert {record.timestamp_type for record in records} == {"LogAppendTime"}
    assert records[0].to_dict()["timestamp_type"] == "LogAppendTime"  # what the CLI prints with --output json

    shared = sorted(_share_consume(cluster, topic, COUNT), key=lambda record: record.offset)
    assert [(r.offset, r.timestamp_ms, r.timestamp_type) for r in shared] == [
        (r.offset, r.timestamp_ms, r.timestamp_type) for r in records
    ]

    # ListOffsets by timestamp looks up the append time, not the 2001 one.
    assert _offset_for(cluster, topic, before_ms) == 0
    assert _offset_for(cluster, topic, after_ms + 1) == -1  # no record appended later

    # A replica holds the leader's bytes: after a clean leader change the new
    # leader serves exactly what the old one stored.
    leader = cluster.leader_of(topic, 0)
    stored = _committed_bytes(cluster, leader, topic)
    assert cluster.stop(leader) == 0
    try:
        new_leader = cluster.leader_of(topic, 0, exclude=leader, timeout_s=30)
        served = wait_until(
            lambda: (data := _committed_bytes(cluster, new_leader, topic)) == stored and data,
            30,
            f"node {new_leader} to serve the committed batches of {topic}",
        )
        assert served == stored
    finally:
        cluster.start_node(leader)
        cluster.wait_node_ready(leader)
    assert [r.timestamp_ms for r in _consume(cluster, topic, COUNT)] == [meta.timestamp_ms for meta in metadata]


def test_create_time_topic_keeps_the_producers_timestamps_until_altered(cluster: Cluster) -> None:
    topic = _create(cluster)
    metadata = _produce_old(cluster, topic, COUNT)
    assert [meta.timestamp_ms for meta in metadata] == [YEAR_2001_MS + i for i in range(COUNT)]
    records = _consume(cluster, topic, COUNT)
    assert [(r.timestamp_ms, r.timestamp_type) for r in records] == [
        (YEAR_2001_MS + i, "CreateTime") for i in range(COUNT)
    ]
    assert _offset_for(cluster, topic, _wall_ms() - 60_000) == -1  # no record that recent

    # The change reaches the leader through the metadata log: produce one
    # record at a time until a response carries an append time.
    with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
        admin.alter_topic_configs(topic, set={"message.timestamp.type": "LogAppendTime"})
    before_ms = _wall_ms()
    with Producer({"bootstrap.servers": cluster.bootstrap}) as producer:
        wait_until(
            lambda: producer.send(topic, "after", partition=0, timestamp_ms=YEAR_2001_MS).result(30).timestamp_ms
            != YEAR_2001_MS,
            30,
            f"the leader of {topic} to apply message.timestamp.type=LogAppendTime",
        )
    after_ms = _wall_ms()
    records = _consume(cluster, topic, COUNT + 1)
    earlier, later = records[:COUNT], records[COUNT:]
    # Batches appended before the change keep their CreateTime timestamps.
    assert [(r.timestamp_ms, r.timestamp_type) for r in earlier] == [
        (YEAR_2001_MS + i, "CreateTime") for i in range(COUNT)
    ]
    assert later[-1].timestamp_type == "LogAppendTime"
    assert before_ms <= later[-1].timestamp_ms <= after_ms
