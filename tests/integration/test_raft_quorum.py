"""Three MetadataQuorum voters (and one observer) in one process on 127.0.0.1.

Covers: election, proposals from a follower, convergence, failover after the
leader is destroyed, an observer following the log, refusals crossing the
quorum as OperatingError, and a full restart from the same directories after
log compaction (the journal-without-dump trap: state must survive).
Every wait is a condition with a deadline; no timing is asserted.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from cluster.metadata import (
    AllocateProducerIds,
    CreateTopic,
    ElectLeaders,
    FenceBroker,
    PartitionElection,
    ProducerIdBlock,
    RegisterBroker,
    UnfenceBroker,
)
from cluster.raft import MetadataQuorum, QuorumSettings, SnapshotLoaded
from coordinator.errors import ErrorCode, OperatingError

DEADLINE_S = 20.0
PROPOSE_TIMEOUT_S = 10.0
# Snapshots must be allowed on every node at any moment for the restart test.
SETTINGS = QuorumSettings(log_compaction_split=False)


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for(condition: Callable[[], object], what: str, deadline_s: float = DEADLINE_S) -> object:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        threading.Event().wait(0.02)
    raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")


class Cluster:
    def __init__(self, root: Path, voter_count: int = 3) -> None:
        ports = free_ports(voter_count)
        self.root = root
        self.voters = {i + 1: f"127.0.0.1:{port}" for i, port in enumerate(ports)}
        self.nodes: dict[int, MetadataQuorum] = {}
        self.applied: dict[int, list[object]] = {}
        self.leadership: dict[int, list[tuple[bool, int]]] = {}
        self.fatal: list[BaseException] = []

    def start(self, node_id: int) -> MetadataQuorum:
        applied = self.applied.setdefault(node_id, [])
        changes = self.leadership.setdefault(node_id, [])
        node = MetadataQuorum(
            node_id,
            self.voters.get(node_id),
            self.voters,
            self.root / f"node-{node_id}",
            on_applied=lambda command, result, version: applied.append(command),
            on_leadership_change=lambda is_leader, term: changes.append((is_leader, term)),
            settings=SETTINGS,
            fatal_handler=self.fatal.append,
        )
        self.nodes[node_id] = node
        return node

    def start_all(self) -> None:
        for node_id in self.voters:
            self.start(node_id)

    def stop(self, node_id: int) -> None:
        self.nodes.pop(node_id).close()

    def stop_all(self) -> None:
        for node_id in list(self.nodes):
            self.stop(node_id)

    def leader(self) -> MetadataQuorum:
        def single_leader() -> MetadataQuorum | None:
            leaders = [n for n in self.nodes.values() if n.is_leader()]
            if len(leaders) != 1:
                return None
            leader = leaders[0]
            # Every running node must agree on who leads.
            if all(n.leader_node_id() == leader.node_id for n in self.nodes.values()):
                return leader
            return None

        return wait_for(single_leader, "one agreed leader")  # type: ignore[return-value]

    def converge(self, version: int) -> None:
        wait_for(
            lambda: all(n.state.version >= version for n in self.nodes.values()),
            f"every node at metadata version {version}",
        )
        images = [n.state.image for n in self.nodes.values()]
        assert all(image == images[0] for image in images[1:])


@pytest.fixture
def cluster(tmp_path: Path):
    c = Cluster(tmp_path)
    yield c
    c.stop_all()
    assert c.fatal == []


def propose_with_retry(node: MetadataQuorum, command: object) -> object:
    """Controllers retry retriable errors; so does the test (with a deadline)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            return node.propose(command, PROPOSE_TIMEOUT_S)
        except OperatingError as error:
            if not error.retriable or time.monotonic() > deadline:
                raise


def register(node: MetadataQuorum, broker_id: int) -> None:
    epoch = propose_with_retry(node, RegisterBroker(broker_id, "127.0.0.1", 9000 + broker_id, f"inc-{broker_id}"))
    propose_with_retry(node, UnfenceBroker(broker_id, epoch))


def test_elect_propose_from_follower_converge_and_fail_over(cluster: Cluster) -> None:
    cluster.start_all()
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    assert cluster.leadership[leader.node_id][-1][0] is True

    for broker_id in (1, 2, 3):
        register(follower, broker_id)
    created = propose_with_retry(follower, CreateTopic("orders", "id-orders", [[1, 2, 3], [2, 3, 1]], {}))
    # Read-your-writes on the proposer: its own replica already has the topic.
    assert follower.state.topic_by_name("orders") == created
    cluster.converge(follower.state.version)

    # A refusal computed by the state machine crosses the quorum as an
    # OperatingError and changes nothing anywhere.
    version = follower.state.version
    with pytest.raises(OperatingError) as refused:
        follower.propose(CreateTopic("orders", "id-other", [[1]], {}), PROPOSE_TIMEOUT_S)
    assert refused.value.code == ErrorCode.TOPIC_ALREADY_EXISTS
    assert follower.state.version == version

    # Destroy the leader: another voter is elected and commits.
    old_leader_id = leader.node_id
    old_term = leader.term()
    cluster.stop(old_leader_id)
    new_leader = cluster.leader()
    assert new_leader.node_id != old_leader_id
    assert new_leader.term() > old_term
    block = propose_with_retry(new_leader, AllocateProducerIds(1, 100))
    assert isinstance(block, ProducerIdBlock) and block.count == 100
    partition = new_leader.state.partition("orders", 0)
    elections = propose_with_retry(
        new_leader,
        ElectLeaders((PartitionElection("orders", 0, 2, (2, 3), partition.partition_epoch, "id-orders"),)),
    )
    assert elections[0].leader == 2 and elections[0].leader_epoch == 1
    cluster.converge(new_leader.state.version)

    # The old leader comes back from its directory and catches up.
    cluster.start(old_leader_id)
    cluster.converge(new_leader.state.version)
    assert cluster.nodes[old_leader_id].state.partition("orders", 0).isr == (2, 3)


def test_observer_follows_and_proposes(cluster: Cluster) -> None:
    cluster.start_all()
    cluster.leader()
    observer = cluster.start(99)  # not in voters: a non-voting observer
    assert observer.voter is False
    register(observer, 7)
    cluster.converge(observer.state.version)
    assert observer.state.broker(7) is not None
    assert not observer.is_leader()


def test_full_restart_after_compaction_keeps_state(cluster: Cluster) -> None:
    cluster.start_all()
    leader = cluster.leader()
    for broker_id in (1, 2, 3):
        register(leader, broker_id)
    for index in range(5):
        propose_with_retry(leader, CreateTopic(f"t{index}", f"id-{index}", [[1, 2], [2, 3], [3, 1]], {}))
    propose_with_retry(leader, FenceBroker(3, leader.state.broker(3).broker_epoch))
    cluster.converge(leader.state.version)
    expected = leader.state.image

    # Snapshot on every node, then wait until each has a dump and a journal
    # shortened to the snapshot point: this is the state that lost everything
    # when only a journal was configured.
    for node in cluster.nodes.values():
        node.compact_log()
    wait_for(
        lambda: all((n.data_dir / "raft.dump").exists() and n.status()["log_length"] <= 3 for n in cluster.nodes.values()),
        "a snapshot and a compacted journal on every node",
    )

    cluster.stop_all()
    cluster.applied.clear()
    cluster.start_all()
    cluster.converge(expected.version)
    for node in cluster.nodes.values():
        assert node.state.image == expected
        assert any(isinstance(c, SnapshotLoaded) for c in cluster.applied[node.node_id])
    # And the restarted quorum still commits.
    leader = cluster.leader()
    propose_with_retry(leader, AllocateProducerIds(1, 10))
    cluster.converge(expected.version + 1)


def test_propose_without_quorum_is_retriable_error(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    try:
        lonely = c.start(1)  # the other two voters never start: no majority
        with pytest.raises(OperatingError) as error:
            lonely.propose(RegisterBroker(1, "127.0.0.1", 9001, "x"), 1.0)
        assert error.value.retriable
        assert error.value.code in (ErrorCode.NOT_CONTROLLER, ErrorCode.REQUEST_TIMED_OUT)
        assert lonely.state.version == 0
    finally:
        c.stop_all()


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        QuorumSettings(election_timeout_min_ms=100, append_entries_period_ms=50).validate()
    with pytest.raises(ValueError):
        QuorumSettings(election_timeout_max_ms=400).validate()


def test_single_voter_and_broken_invariant_is_fatal(tmp_path: Path) -> None:
    c = Cluster(tmp_path, voter_count=1)
    try:
        node = c.start(1)
        register(node, 1)  # a one-voter quorum elects itself and commits
        version = node.state.version
        # An unknown command type is a broken invariant (a node running older
        # code): the fatal handler runs instead of the node skipping it.
        with pytest.raises(OperatingError):
            node.propose("not a command", 1.0)  # type: ignore[arg-type]
        wait_for(lambda: any(isinstance(e, AssertionError) for e in c.fatal), "the fatal handler")
        assert node.state.version == version
    finally:
        c.stop_all()
