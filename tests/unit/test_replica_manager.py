"""ReplicaManager in one process: three managers over real logs and a real
metadata state machine, replicated by calling the same leader/follower paths
the replica fetcher and the ReplicaFetch servicer use.

Deterministic: no threads, no sockets, no timers. A "fetch round" is one
ReplicaFetch exchange per follower; ISR shrink is driven with an explicit
``now``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cluster.metadata import (
    CreateTopic,
    ElectLeaders,
    MetadataState,
    PartitionElection,
    RegisterBroker,
    Rejected,
    UnfenceBroker,
)
from coordinator.errors import ErrorCode, OperatingError
from node.config import parse_settings
from node.interfaces import LeadershipChange, monotonic_ms
from node.replica_manager import ReplicaManager, Role
from proto.batch import build_batch, records_in

TOPIC = "t"
KEY = (TOPIC, 0)


def batch(*values: bytes) -> bytes:
    return build_batch([(None, value, (), 1_700_000_000_000) for value in values])


class InProcessCluster:
    def __init__(self, base: Path, node_ids=(1, 2, 3), min_insync: str = "2") -> None:
        self.state = MetadataState()
        self.settings = parse_settings({"replica.lag.time.max.ms": "1000"})
        self.managers = {
            node_id: ReplicaManager(node_id, base / f"node-{node_id}", self.settings, self.propose) for node_id in node_ids
        }
        for node_id in node_ids:
            epoch = self.state.apply(RegisterBroker(node_id, "127.0.0.1", 9000 + node_id, f"inc-{node_id}"))
            self.state.apply(UnfenceBroker(node_id, epoch))
        created = self.state.apply(
            CreateTopic(TOPIC, "topic-id", ((1, 2, 3),), configs={"min.insync.replicas": min_insync})
        )
        assert not isinstance(created, Rejected), created
        self.sync()

    async def propose(self, command: object, timeout_s: float) -> object:
        result = self.state.apply(command)
        if isinstance(result, Rejected):
            raise result.to_error()
        self.sync()
        return result

    def sync(self) -> None:
        for manager in self.managers.values():
            manager.apply_metadata(self.state.image, caught_up=True)

    def leader(self) -> int:
        return self.state.image.partition(TOPIC, 0).leader

    def fetch_round(self, follower_id: int) -> str:
        """One ReplicaFetch exchange: 'diverged', 'appended' or 'idle'."""
        follower = self.managers[follower_id]
        leader = self.managers[self.leader()]
        state = follower.follower_fetch_state(KEY)
        assert state is not None, f"node {follower_id} does not follow {KEY}"
        fetch_offset, epoch, last_fetched_epoch, _ = state
        records, high_watermark, log_start, diverging = leader.replica_fetch_partition(
            follower_id, TOPIC, 0, fetch_offset, epoch, last_fetched_epoch, 1 << 20
        )
        if diverging is not None:
            follower.truncate_follower(KEY, epoch, diverging[0], diverging[1])
            return "diverged"
        follower.append_as_follower(KEY, epoch, records, high_watermark, log_start)
        return "appended" if records else "idle"

    def replicate_all(self, rounds: int = 4) -> None:
        for _ in range(rounds):
            for node_id in self.managers:
                if node_id != self.leader() and self.managers[node_id].replicas[KEY].role == Role.FOLLOWER:
                    self.fetch_round(node_id)

    def values(self, node_id: int) -> list[bytes | None]:
        replica = self.managers[node_id].replicas[KEY]
        data = replica.log.read(replica.log.log_start_offset, 1 << 24, replica.log.log_end_offset)
        return [record.value for record in records_in(data)]

    def log_bytes(self, node_id: int) -> bytes:
        replica = self.managers[node_id].replicas[KEY]
        return replica.log.read(replica.log.log_start_offset, 1 << 24, replica.log.log_end_offset)

    async def close(self) -> None:
        for manager in self.managers.values():
            await manager.close()


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_high_watermark_is_the_minimum_over_the_isr(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = InProcessCluster(tmp_path)
        leader = cluster.managers[1]
        await leader.append(TOPIC, 0, batch(b"a", b"b"), acks=1)
        assert leader.high_watermark(TOPIC, 0) == 0  # followers' positions unknown in this epoch
        cluster.fetch_round(2)  # node 2 reports 0, receives the batch
        cluster.fetch_round(2)  # node 2 reports 2
        assert leader.high_watermark(TOPIC, 0) == 0  # node 3 still unknown
        cluster.fetch_round(3)
        cluster.fetch_round(3)
        assert leader.high_watermark(TOPIC, 0) == 2
        # Consumers read only below the HW; followers learn it on their next fetch.
        assert leader.read(TOPIC, 0, 0, 1 << 20) != b""
        cluster.fetch_round(2)
        assert cluster.managers[2].high_watermark(TOPIC, 0) == 2
        await cluster.close()

    run(scenario)


def test_acks_all_completes_once_the_isr_has_the_batch(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = InProcessCluster(tmp_path)
        append = asyncio.create_task(cluster.managers[1].append(TOPIC, 0, batch(b"x"), acks=-1, timeout_ms=10_000))
        await asyncio.sleep(0)
        assert not append.done()
        cluster.replicate_all()
        result = await append
        assert (result.base_offset, result.last_offset) == (0, 0)
        timed_out = cluster.managers[1].append(TOPIC, 0, batch(b"y"), acks=-1, timeout_ms=50)
        with pytest.raises(OperatingError) as refused:
            await timed_out
        assert refused.value.code == ErrorCode.REQUEST_TIMED_OUT
        await cluster.close()

    run(scenario)


def test_planted_bug_acks_before_replication_really_skips_the_wait(tmp_path: Path, monkeypatch) -> None:
    """The chaos mutation gate's switch must change behaviour, or the gate passes vacuously."""
    import node.replica_manager as replica_manager

    monkeypatch.setattr(replica_manager, "BUG_ACK_BEFORE_REPLICATION", True)

    async def scenario() -> None:
        cluster = InProcessCluster(tmp_path)
        leader = cluster.managers[1]
        result = await leader.append(TOPIC, 0, batch(b"x"), acks=-1, timeout_ms=10_000)
        assert (result.base_offset, leader.high_watermark(TOPIC, 0)) == (0, 0)  # answered, not replicated
        await cluster.close()

    run(scenario)


def test_divergent_tail_is_truncated_after_a_leader_change(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = InProcessCluster(tmp_path)
        old_leader = cluster.managers[1]
        await old_leader.append(TOPIC, 0, batch(b"committed"), acks=1)
        cluster.replicate_all()
        # A write only the old leader gets (acks=1, then it is cut off).
        await old_leader.append(TOPIC, 0, batch(b"divergent-1", b"divergent-2"), acks=1)
        assert old_leader.log_end_offset(TOPIC, 0) == 3
        partition = cluster.state.image.partition(TOPIC, 0)
        await cluster.propose(
            ElectLeaders((PartitionElection(TOPIC, 0, 2, (2, 3), partition.partition_epoch, "topic-id"),)), 5
        )
        assert cluster.leader() == 2
        assert old_leader.replicas[KEY].role == Role.FOLLOWER
        new_leader = cluster.managers[2]
        await new_leader.append(TOPIC, 0, batch(b"new"), acks=1)
        # KIP-279: the old leader's first fetch is answered with a diverging
        # epoch, it truncates, and then copies the new leader's batch.
        assert cluster.fetch_round(1) == "diverged"
        assert old_leader.log_end_offset(TOPIC, 0) == 1
        assert cluster.fetch_round(1) == "appended"
        assert cluster.values(1) == [b"committed", b"new"]
        assert cluster.log_bytes(1) == cluster.log_bytes(2)
        # Writes through the deposed leader are refused with the new epoch known.
        with pytest.raises(OperatingError) as refused:
            await old_leader.append(TOPIC, 0, batch(b"zombie"), acks=1)
        assert refused.value.code == ErrorCode.NOT_LEADER_OR_FOLLOWER
        assert old_leader.leader_hint(TOPIC, 0) == (2, 1)
        await cluster.close()

    run(scenario)


def test_leader_that_wrote_nothing_in_its_epoch_does_not_loop_on_divergence(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = InProcessCluster(tmp_path)
        await cluster.managers[1].append(TOPIC, 0, batch(b"a"), acks=1)
        cluster.replicate_all()
        # Node 2 leads epoch 1 without writing, then node 3 leads epoch 2.
        for new_leader, isr in ((2, (2, 3, 1)), (3, (3, 1, 2))):
            partition = cluster.state.image.partition(TOPIC, 0)
            await cluster.propose(
                ElectLeaders((PartitionElection(TOPIC, 0, new_leader, isr, partition.partition_epoch, "topic-id"),)), 5
            )
        await cluster.managers[3].append(TOPIC, 0, batch(b"b"), acks=1)
        assert cluster.fetch_round(2) == "appended"
        assert cluster.values(2) == [b"a", b"b"]
        await cluster.close()

    run(scenario)


def test_epoch_checks_on_produce_and_replica_fetch(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = InProcessCluster(tmp_path)
        leader = cluster.managers[1]
        # Leadership goes to node 2 and back: node 1 leads at epoch 2.
        for new_leader in (2, 1):
            partition = cluster.state.image.partition(TOPIC, 0)
            await cluster.propose(
                ElectLeaders((PartitionElection(TOPIC, 0, new_leader, (1, 2), partition.partition_epoch, "topic-id"),)), 5
            )
        current = leader.leader_epoch(TOPIC, 0)
        assert current == 2
        with pytest.raises(OperatingError) as stale:
            await leader.append(TOPIC, 0, batch(b"x"), acks=1, expected_leader_epoch=current - 1)
        assert stale.value.code == ErrorCode.FENCED_LEADER_EPOCH
        with pytest.raises(OperatingError) as ahead:
            leader.fetch_partition(TOPIC, 0, 0, 1024, current + 1)
        assert ahead.value.code == ErrorCode.UNKNOWN_LEADER_EPOCH
        with pytest.raises(OperatingError) as fenced:
            leader.replica_fetch_partition(2, TOPIC, 0, 0, current - 1, -1, 1024)
        assert fenced.value.code == ErrorCode.FENCED_LEADER_EPOCH
        with pytest.raises(OperatingError) as not_leader:
            await cluster.managers[2].append(TOPIC, 0, batch(b"x"))
        assert not_leader.value.code == ErrorCode.NOT_LEADER_OR_FOLLOWER
        await cluster.close()

    run(scenario)


def test_isr_shrinks_for_a_lagging_follower_and_expands_when_it_catches_up(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = InProcessCluster(tmp_path, min_insync="3")
        leader = cluster.managers[1]
        cluster.replicate_all()
        await leader.append(TOPIC, 0, batch(b"a"), acks=1)
        cluster.fetch_round(2)
        cluster.fetch_round(2)
        # Node 3 has not caught up for longer than replica.lag.time.max.ms
        # (its last catch-up is moved into the past instead of sleeping).
        leader.replicas[KEY].followers[3].last_caught_up_ms -= 5_000
        leader._maybe_shrink_isr(leader.replicas[KEY], monotonic_ms())
        for _ in range(10):
            await asyncio.sleep(0)
        assert cluster.state.image.partition(TOPIC, 0).isr == (1, 2)
        assert leader.high_watermark(TOPIC, 0) == 1  # no longer held back by node 3
        with pytest.raises(OperatingError) as refused:
            await leader.append(TOPIC, 0, batch(b"b"), acks=-1)
        assert refused.value.code == ErrorCode.NOT_ENOUGH_REPLICAS
        assert leader.log_end_offset(TOPIC, 0) == 1  # the refused batch was not written
        # Node 3 catches up to the HW: the leader adds it back.
        cluster.fetch_round(3)
        cluster.fetch_round(3)
        for _ in range(10):
            await asyncio.sleep(0)
        assert cluster.state.image.partition(TOPIC, 0).isr == (1, 2, 3)
        await cluster.close()

    run(scenario)


def test_leadership_listener_sees_the_epoch_already_recorded(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = InProcessCluster(tmp_path)
        seen: list[tuple[LeadershipChange, list]] = []
        manager = cluster.managers[2]
        manager.add_leadership_listener(
            lambda change: seen.append((change, list(manager.replicas[KEY].log.leader_epoch_entries)))
        )
        partition = cluster.state.image.partition(TOPIC, 0)
        await cluster.propose(
            ElectLeaders((PartitionElection(TOPIC, 0, 2, (2, 3), partition.partition_epoch, "topic-id"),)), 5
        )
        change, entries = seen[-1]
        assert change == LeadershipChange(TOPIC, 0, True, 1)
        assert entries[-1].epoch == 1
        await cluster.close()

    run(scenario)


def test_stale_metadata_never_makes_a_leader_at_an_older_epoch(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = InProcessCluster(tmp_path)
        old_image = cluster.state.image
        partition = old_image.partition(TOPIC, 0)
        await cluster.propose(
            ElectLeaders((PartitionElection(TOPIC, 0, 2, (2, 3, 1), partition.partition_epoch, "topic-id"),)), 5
        )
        await cluster.managers[2].append(TOPIC, 0, batch(b"epoch-1"), acks=1)
        cluster.replicate_all()
        node1 = cluster.managers[1]
        assert node1.replicas[KEY].log.latest_epoch == 1
        # Re-applying the old image (leader 1 at epoch 0) must not make node 1 lead.
        node1.apply_metadata(old_image, caught_up=True)
        assert node1.replicas[KEY].role == Role.NONE
        with pytest.raises(OperatingError):
            await node1.append(TOPIC, 0, batch(b"stale"), acks=1)
        await cluster.close()

    run(scenario)


def test_directory_of_a_deleted_topic_is_not_served_to_its_successor(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = InProcessCluster(tmp_path)
        await cluster.managers[1].append(TOPIC, 0, batch(b"old topic"), acks=1)
        directory = cluster.managers[1].replicas[KEY].log.directory
        assert (directory / "partition.metadata").read_text() == "topic_id: topic-id\n"
        await cluster.close()
        # While node 1 is down the topic is deleted and created again.
        state = MetadataState()
        for node_id in (1, 2, 3):
            epoch = state.apply(RegisterBroker(node_id, "127.0.0.1", 9000 + node_id, f"again-{node_id}"))
            state.apply(UnfenceBroker(node_id, epoch))
        state.apply(CreateTopic(TOPIC, "new-topic-id", ((1, 2, 3),)))
        restarted = ReplicaManager(1, tmp_path / "node-1", cluster.settings, cluster.propose)
        restarted.apply_metadata(state.image, caught_up=False)
        assert KEY not in restarted.replicas  # undecided while the metadata may be stale
        restarted.apply_metadata(state.image, caught_up=True)
        assert restarted.log_end_offset(TOPIC, 0) == 0
        assert (directory / "partition.metadata").read_text() == "topic_id: new-topic-id\n"
        await restarted.close()

    run(scenario)


def test_acks_all_reports_not_enough_replicas_after_append_when_the_isr_shrinks(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = InProcessCluster(tmp_path, min_insync="3")
        leader = cluster.managers[1]
        cluster.replicate_all()
        append = asyncio.create_task(leader.append(TOPIC, 0, batch(b"x"), acks=-1, timeout_ms=10_000))
        await asyncio.sleep(0)
        cluster.fetch_round(2)
        cluster.fetch_round(2)
        # Node 3 stalls; the ISR shrinks to (1, 2), which lets the HW pass the
        # batch, but two replicas are fewer than min.insync.replicas=3.
        leader.replicas[KEY].followers[3].last_caught_up_ms -= 5_000
        leader._maybe_shrink_isr(leader.replicas[KEY], monotonic_ms())
        with pytest.raises(OperatingError) as refused:
            await append
        assert refused.value.code == ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND
        await cluster.close()

    run(scenario)
