"""ShareConsumer end to end over real node processes: KIP-932 behaviour a user can observe."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import AcknowledgeType, Admin, Consumer, NewTopic, Producer, ShareConsumer
from client.errors import GroupIdNotFoundError, ShoalError
from client.types import RecordState, TopicPartition
from tests.harness import Cluster, start_cluster, wait_until

pytestmark = [pytest.mark.multiprocess, pytest.mark.xdist_group("cluster")]

LOCK_MS = 2000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # Short locks and sessions so that expiry scenarios take seconds.
    settings = {"group.share.record.lock.duration.ms": str(LOCK_MS), "group.share.min.record.lock.duration.ms": "1000"}
    with start_cluster(3, Path(tmp_path_factory.mktemp("client-share")), settings) as running:
        yield running


def _setup(cluster: Cluster, partitions: int = 1, records: int = 0) -> tuple[str, str]:
    topic, group = f"q-{uuid.uuid4().hex[:8]}", f"sg-{uuid.uuid4().hex[:8]}"
    with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
        admin.create_topics([NewTopic(topic, partitions, 3)])[topic].result()
        admin.alter_group_configs(group, set={"share.auto.offset.reset": "earliest"})
    if records:
        _produce(cluster, topic, records)
    return topic, group


def _produce(cluster: Cluster, topic: str, count: int, start: int = 0) -> None:
    with Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 1}) as producer:
        for i in range(start, start + count):
            producer.send(topic, str(i), partition=i % len(producer.partitions_for(topic)))
        producer.flush(30)


def _consumer(cluster: Cluster, group: str, **extra: object) -> ShareConsumer:
    return ShareConsumer({"bootstrap.servers": cluster.bootstrap, "group.id": group, **extra})


def _poll_until(consumers: list[ShareConsumer], done, timeout_s: float = 30.0, ack=None) -> list:
    got: list = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not done(got):
        for consumer in consumers:
            records = consumer.poll(0.2)
            for record in records:
                got.append((consumer, record))
                if ack is not None:
                    consumer.acknowledge(record, ack)
    return got


def test_several_consumers_receive_each_record_exactly_once(cluster: Cluster) -> None:
    topic, group = _setup(cluster, partitions=2, records=300)
    consumers = [_consumer(cluster, group) for _ in range(3)]
    try:
        for consumer in consumers:
            consumer.subscribe([topic])
        got = _poll_until(consumers, lambda g: len(g) >= 300, 60)
        for consumer in consumers:
            consumer.commit_sync()
        extra = _poll_until(consumers, lambda g: False, 2)  # nothing more comes
        counts = Counter(int(r.value) for _, r in got + extra)
        assert sorted(counts) == list(range(300))
        assert max(counts.values()) == 1
        assert all(r.delivery_count == 1 for _, r in got)
    finally:
        for consumer in consumers:
            consumer.close()


def test_lock_expiry_redelivers_with_delivery_count_two(cluster: Cluster) -> None:
    topic, group = _setup(cluster, records=5)
    sleeper = _consumer(cluster, group, **{"share.acknowledgement.mode": "explicit"})
    sleeper.subscribe([topic])
    first = [r for _, r in _poll_until([sleeper], lambda g: len(g) >= 5)]
    assert sleeper.acquisition_lock_timeout_ms == LOCK_MS
    # The "crashed" member neither acknowledges nor polls: its locks expire.
    other = _consumer(cluster, group)
    try:
        other.subscribe([topic])
        again = [r for _, r in _poll_until([other], lambda g: len(g) >= 5, LOCK_MS / 1000 + 30)]
        assert sorted(r.offset for r in again) == sorted(r.offset for r in first)
        assert {r.delivery_count for r in again} == {2}
        other.commit_sync()
    finally:
        other.close()
        for record in first:
            sleeper.acknowledge(record, AcknowledgeType.RELEASE)
        sleeper.close()


def test_released_five_times_is_archived(cluster: Cluster) -> None:
    topic, group = _setup(cluster, records=1)
    consumer = _consumer(cluster, group, **{"share.acknowledgement.mode": "explicit"})
    try:
        consumer.subscribe([topic])
        counts = []
        for _ in range(5):
            got = [r for _, r in _poll_until([consumer], lambda g: len(g) >= 1)]
            assert len(got) == 1
            counts.append(got[0].delivery_count)
            consumer.acknowledge(got[0], AcknowledgeType.RELEASE)
            assert all(error is None for error in consumer.commit_sync().values())
        assert counts == [1, 2, 3, 4, 5]
        assert _poll_until([consumer], lambda g: False, 3) == []  # archived at the limit
        with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
            states = admin.describe_share_partitions(group, [TopicPartition(topic, 0)])
        runs = [run for s in states for run in s.runs if run.first_offset <= 0 <= run.last_offset]
        assert not runs or runs[0].state == RecordState.ARCHIVED
    finally:
        consumer.close()


def test_member_leaving_releases_its_records(cluster: Cluster) -> None:
    topic, group = _setup(cluster, records=10)
    leaver = _consumer(cluster, group, **{"share.acknowledgement.mode": "explicit"})
    leaver.subscribe([topic])
    held = [r for _, r in _poll_until([leaver], lambda g: len(g) >= 10)]
    leaver.close()  # unacknowledged records are released, not left to expire
    taker = _consumer(cluster, group)
    try:
        taker.subscribe([topic])
        started = time.monotonic()
        got = [r for _, r in _poll_until([taker], lambda g: len(g) >= 10, 30)]
        assert sorted(r.offset for r in got) == sorted(r.offset for r in held)
        assert {r.delivery_count for r in got} <= {1, 2}
        taker.commit_sync()
        assert time.monotonic() - started < 30
    finally:
        taker.close()


def test_two_groups_each_see_everything(cluster: Cluster) -> None:
    topic, group_a = _setup(cluster, records=50)
    group_b = f"sg-{uuid.uuid4().hex[:8]}"
    with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
        admin.alter_group_configs(group_b, set={"share.auto.offset.reset": "earliest"})
    a, b = _consumer(cluster, group_a), _consumer(cluster, group_b)
    try:
        a.subscribe([topic])
        b.subscribe([topic])
        got_a = _poll_until([a], lambda g: len(g) >= 50)
        got_b = _poll_until([b], lambda g: len(g) >= 50)
        assert sorted(int(r.value) for _, r in got_a) == list(range(50))
        assert sorted(int(r.value) for _, r in got_b) == list(range(50))
    finally:
        a.close()
        b.close()


def test_group_id_namespace_conflict_is_a_typed_error(cluster: Cluster) -> None:
    topic, _ = _setup(cluster, records=1)
    group = f"cg-{uuid.uuid4().hex[:8]}"
    with Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group, "auto.offset.reset": "earliest"}) as classic:
        classic.subscribe([topic])
        wait_until(lambda: classic.poll(0.2) or classic.assignment(), 30, "the consumer group to form")
        share = _consumer(cluster, group)
        try:
            share.subscribe([topic])
            with pytest.raises(ShoalError) as info:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    share.poll(0.2)
            assert isinstance(info.value, GroupIdNotFoundError) or info.value.name == "INCONSISTENT_GROUP_PROTOCOL"
            assert group in info.value.message
        finally:
            share.close()
        with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
            with pytest.raises(GroupIdNotFoundError, match="not a share group"):
                admin.describe_share_groups([group])[group].result()


def test_reset_offsets_to_earliest_redelivers(cluster: Cluster) -> None:
    topic, group = _setup(cluster, records=20)
    consumer = _consumer(cluster, group)
    consumer.subscribe([topic])
    _poll_until([consumer], lambda g: len(g) >= 20)
    consumer.commit_sync()
    consumer.close()
    tp = TopicPartition(topic, 0)
    with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
        wait_until(lambda: admin.list_share_group_offsets(group).get(tp) and admin.list_share_group_offsets(group)[tp].start_offset == 20,
                   30, "the start offset to reach 20")
        # The group must be empty: wait for the leave to be processed.
        wait_until(lambda: not admin.describe_share_groups([group])[group].result().members, 30, "the group to be empty")
        admin.alter_share_group_offsets(group, {tp: 0})
        assert admin.list_share_group_offsets(group)[tp].start_offset == 0
    again = _consumer(cluster, group)
    try:
        again.subscribe([topic])
        got = _poll_until([again], lambda g: len(g) >= 20)
        assert sorted(int(r.value) for _, r in got) == list(range(20))
    finally:
        again.close()
