"""Three real nodes, replication factor 3: acks=all, convergence, min ISR.

The cluster is shared by the module; each test uses its own topic. The min-ISR
test stops two nodes and runs last.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from proto import shoal_pb2
from tests.harness import Cluster, fetch, make_batch, produce, read_all, start_cluster, wait_until

pytestmark = [pytest.mark.multiprocess, pytest.mark.xdist_group("cluster")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    with start_cluster(3, tmp_path_factory.mktemp("replication")) as running:
        yield running


def segment_digest(cluster: Cluster, node_id: int, topic: str, partition: int) -> str:
    directory: Path = cluster.nodes[node_id].data_dir / "logs" / f"{topic}-{partition}"
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.log")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_acks_all_completes_at_the_high_watermark(cluster: Cluster) -> None:
    cluster.create_topic("replicated", partitions=1, replication_factor=3)
    metadata = cluster.partition_metadata("replicated", 0)
    assert sorted(metadata.replicas) == [1, 2, 3]
    leader = cluster.leader_of("replicated", 0)
    stub = cluster.broker(leader)
    wait_until(lambda: len(cluster.partition_metadata("replicated", 0).isr) == 3, 15, "a full ISR")
    for i in range(20):
        result = produce(stub, "replicated", 0, make_batch([f"v{i}".encode()] * 10))
        assert result.error_code == shoal_pb2.NONE, result.error_message
        # acks=all returned: the high watermark is already past the batch.
        assert fetch(stub, "replicated", 0, 0).high_watermark >= result.base_offset + 10
    assert len(read_all(stub, "replicated", 0)) == 200


def test_followers_converge_byte_for_byte(cluster: Cluster) -> None:
    cluster.create_topic("converge", partitions=3, replication_factor=3)
    for partition in range(3):
        leader = cluster.leader_of("converge", partition)
        for i in range(10):
            produce(cluster.broker(leader), "converge", partition, make_batch([f"p{partition}-{i}".encode()] * 50), acks=1)
    for partition in range(3):
        wait_until(
            lambda: len({segment_digest(cluster, n, "converge", partition) for n in cluster.node_ids}) == 1
            and segment_digest(cluster, 1, "converge", partition) != hashlib.sha256().hexdigest(),
            15,
            f"replicas of converge-{partition} to hold identical bytes",
        )
    # Leaders are spread over the nodes.
    leaders = {cluster.leader_of("converge", p) for p in range(3)}
    assert len(leaders) == 3


def test_non_leader_refuses_with_a_leader_hint(cluster: Cluster) -> None:
    cluster.create_topic("hinted", replication_factor=3)
    leader = cluster.leader_of("hinted", 0)
    follower = next(n for n in cluster.node_ids if n != leader)
    result = produce(cluster.broker(follower), "hinted", 0, make_batch([b"x"]))
    assert result.error_code == shoal_pb2.NOT_LEADER_OR_FOLLOWER
    assert result.current_leader.leader_id == leader
    data = fetch(cluster.broker(follower), "hinted", 0, 0)
    assert data.error_code == shoal_pb2.NOT_LEADER_OR_FOLLOWER
    assert data.current_leader.leader_id == leader
    epoch = cluster.partition_metadata("hinted", 0).leader_epoch
    stale = fetch(cluster.broker(leader), "hinted", 0, 0, leader_epoch=epoch - 1) if epoch > 0 else None
    if stale is not None:
        assert stale.error_code == shoal_pb2.FENCED_LEADER_EPOCH


def test_admin_requests_work_from_any_node(cluster: Cluster) -> None:
    controller = cluster.active_controller()
    other = next(n for n in cluster.node_ids if n != controller)
    response = cluster.broker(other).CreateTopics(
        shoal_pb2.CreateTopicsRequest(topics=[shoal_pb2.NewTopic(name="forwarded", num_partitions=2, replication_factor=2)]),
        timeout=15,
    )
    assert response.results[0].error_code == shoal_pb2.NONE, response.results[0].error_message
    cluster.leader_of("forwarded", 1)
    described = cluster.broker(other).DescribeTopics(shoal_pb2.DescribeTopicsRequest(names=["forwarded"]), timeout=5)
    partitions = described.topics[0].partitions
    assert [len(p.replicas) for p in partitions] == [2, 2]
    # HW and log start come from the leaders, wherever they are.
    assert all(p.high_watermark == 0 and p.log_start_offset == 0 for p in partitions)
    cluster_view = cluster.describe_cluster(other)
    assert cluster_view.controller_id == controller
    assert {b.node_id for b in cluster_view.brokers if not b.fenced} == {1, 2, 3}


def test_rf3_topics_default_to_min_insync_2(cluster: Cluster) -> None:
    cluster.create_topic("defaults", replication_factor=3)
    described = cluster.any_call(lambda stub: stub.DescribeTopics(shoal_pb2.DescribeTopicsRequest(names=["defaults"]), timeout=5))
    assert described.topics[0].configs["min.insync.replicas"] == "2"


def test_sigterm_moves_leadership_before_the_process_exits(cluster: Cluster) -> None:
    cluster.create_topic("handover", partitions=3, replication_factor=3)
    wait_until(
        lambda: all(len(cluster.partition_metadata("handover", p).isr) == 3 for p in range(3)), 15, "full ISRs"
    )
    leader = cluster.leader_of("handover", 0)
    observer = next(n for n in cluster.node_ids if n != leader)
    assert cluster.stop(leader) == 0
    # Controlled shutdown: the controller moved every leadership and fenced
    # the node before it exited, so nothing waits for a session timeout.
    # (The short wait only covers this node applying the committed change;
    # it is below the 2 s session timeout that a crash would cost.)
    def moved() -> bool:
        metadata = [cluster.partition_metadata("handover", p, node_id=observer) for p in range(3)]
        return all(m.leader not in (leader, -1) and leader not in m.isr for m in metadata) and any(
            b.node_id == leader and b.fenced for b in cluster.describe_cluster(observer).brokers
        )

    wait_until(moved, 1.0, "leaderships moved and the node fenced")
    cluster.start_node(leader)
    cluster.wait_ready()
    wait_until(
        lambda: all(len(cluster.partition_metadata("handover", p).isr) == 3 for p in range(3)), 30, "ISRs refilled"
    )


def test_zz_min_insync_replicas_refuses_acks_all(cluster: Cluster) -> None:
    cluster.create_topic("min-isr", replication_factor=3, configs={"min.insync.replicas": "2"})
    leader = cluster.leader_of("min-isr", 0)
    stub = cluster.broker(leader)
    assert produce(stub, "min-isr", 0, make_batch([b"before"])).error_code == shoal_pb2.NONE
    for node_id in cluster.node_ids:
        if node_id != leader:
            cluster.stop(node_id)
    # The leader drops the stopped followers from the ISR (controlled
    # shutdown plus replica.lag.time.max.ms); then acks=all is refused.
    wait_until(lambda: list(cluster.partition_metadata("min-isr", 0, node_id=leader).isr) == [leader], 30, "ISR shrink")
    refused = produce(stub, "min-isr", 0, make_batch([b"refused"]))
    assert refused.error_code == shoal_pb2.NOT_ENOUGH_REPLICAS, refused.error_message
    # acks=1 still works, and the refused batch left nothing behind.
    accepted = produce(stub, "min-isr", 0, make_batch([b"acks1"]), acks=1)
    assert accepted.error_code == shoal_pb2.NONE and accepted.base_offset == 1
