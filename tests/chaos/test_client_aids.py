"""The client features the chaos workload relies on, over a real 3-node cluster.

* ``ConsumerRecord.node_id`` names the node whose share session acquired the record.
* ``ShareConsumer.buffered_records()`` shows what a poll acquired but did not return,
  and the next poll returns exactly that first (the workload records a delivery
  in the poll that acquired it, so this must be true).
* ``ShareConsumer.abort()`` crashes without acknowledging: acknowledgements made but
  not committed never reach the broker, so the records come back (count 2), where
  ``close()`` would have committed them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import AcknowledgeType, Admin, NewTopic, Producer, ShareConsumer
from tests.harness import Cluster, start_cluster

pytestmark = [pytest.mark.multiprocess, pytest.mark.xdist_group("chaos"), pytest.mark.timeout(180)]

LOCK_MS = 2000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    settings = {"group.share.record.lock.duration.ms": str(LOCK_MS), "group.share.min.record.lock.duration.ms": "1000"}
    with start_cluster(3, Path(tmp_path_factory.mktemp("client-aids")), settings) as running:
        yield running


def _topic_with_records(cluster: Cluster, partitions: int, records: int) -> tuple[str, str]:
    topic, group = f"aid-{uuid.uuid4().hex[:8]}", f"sg-{uuid.uuid4().hex[:8]}"
    with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
        admin.create_topics([NewTopic(topic, partitions, 3)])[topic].result()
        admin.alter_group_configs(group, set={"share.auto.offset.reset": "earliest"})
    with Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "linger.ms": 1}) as producer:
        for i in range(records):
            producer.send(topic, str(i), partition=i % partitions)
        producer.flush(30)
    return topic, group


def _consumer(
    cluster: Cluster, group: str, topic: str, max_poll_records: int, acquire_mode: str = "record_limit"
) -> ShareConsumer:
    consumer = ShareConsumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": group,
            "share.acknowledgement.mode": "explicit",
            "share.acquire.mode": acquire_mode,
            "max.poll.records": max_poll_records,
        }
    )
    consumer.subscribe([topic])
    return consumer


def test_node_id_and_buffered_records_are_what_the_next_poll_returns(cluster: Cluster) -> None:
    # Six partitions over three nodes: in batch_optimized mode each leader may answer
    # up to max.poll.records (record_limit splits the limit over the leaders and so
    # never buffers), so a poll ends up holding more than it returns.
    topic, group = _topic_with_records(cluster, partitions=6, records=120)
    consumer = _consumer(cluster, group, topic, max_poll_records=5, acquire_mode="batch_optimized")
    try:
        buffered: list = []
        deadline = time.monotonic() + 60
        while not buffered and time.monotonic() < deadline:
            for record in consumer.poll(1.0):
                assert record.node_id in cluster.node_ids
                consumer.acknowledge(record, AcknowledgeType.ACCEPT)
            consumer.commit_sync()
            buffered = consumer.buffered_records()
        assert buffered, "no poll left acquired records in the client within 60 s"
        assert all(record.node_id in cluster.node_ids for record in buffered)
        returned = consumer.poll(1.0)
        key = lambda record: (record.partition, record.offset, record.delivery_count, record.node_id)  # noqa: E731
        assert [key(r) for r in returned] == [key(r) for r in buffered[: len(returned)]]
        assert len(returned) == min(5, len(buffered))
        for record in returned:
            consumer.acknowledge(record, AcknowledgeType.ACCEPT)
    finally:
        consumer.close(timeout=10)


def test_abort_drops_uncommitted_acknowledgements_and_the_records_come_back(cluster: Cluster) -> None:
    topic, group = _topic_with_records(cluster, partitions=1, records=5)
    crashing = _consumer(cluster, group, topic, max_poll_records=5)
    held: list = []
    deadline = time.monotonic() + 60
    while not held and time.monotonic() < deadline:
        held = crashing.poll(1.0)
    assert held, "the first member received nothing within 60 s"
    for record in held:
        crashing.acknowledge(record, AcknowledgeType.ACCEPT)  # made, never committed
    crashing.abort()
    crashing.abort()  # idempotent, and close() after it does nothing
    crashing.close()
    successor = _consumer(cluster, group, topic, max_poll_records=5)
    try:
        redelivered: dict[int, int] = {}
        deadline = time.monotonic() + 60
        wanted = {record.offset for record in held}
        while not wanted <= set(redelivered) and time.monotonic() < deadline:
            for record in successor.poll(1.0):
                redelivered[record.offset] = record.delivery_count
                successor.acknowledge(record, AcknowledgeType.ACCEPT)
            successor.commit_sync()
        assert wanted <= set(redelivered), f"records {sorted(wanted - set(redelivered))} never came back"
        # Delivered again after the lock expired: the ACCEPTs of the aborted member never arrived.
        assert all(redelivered[offset] == 2 for offset in wanted), redelivered
    finally:
        successor.close(timeout=10)
