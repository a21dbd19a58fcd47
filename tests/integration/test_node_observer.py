"""Four nodes, three voters: the fourth node observes the metadata quorum
(non-voting) yet is a full broker: it registers, hosts and leads partitions,
and its loss costs the quorum nothing."""

from __future__ import annotations

import pytest

from proto import shoal_pb2
from tests.harness import make_batch, produce, read_all, start_cluster, wait_until

pytestmark = [pytest.mark.multiprocess, pytest.mark.xdist_group("cluster")]


def test_observer_node_is_a_full_broker(tmp_path) -> None:
    with start_cluster(4, tmp_path) as cluster:
        assert cluster.voters == [1, 2, 3]
        assert "4@" not in cluster.quorum()
        cluster.create_topic("spread", partitions=4, replication_factor=3)
        assert 4 in {cluster.leader_of("spread", p) for p in range(4)}
        for partition in range(4):
            leader = cluster.leader_of("spread", partition)
            assert produce(cluster.broker(leader), "spread", partition, make_batch([b"v"])).error_code == shoal_pb2.NONE
        # The observer cannot be the controller; killing it leaves the quorum whole.
        assert cluster.active_controller() in (1, 2, 3)
        cluster.kill(4)
        cluster.create_topic("after-observer-loss", replication_factor=3)
        for partition in range(4):
            leader = cluster.leader_of("spread", partition, exclude=4)
            assert [v for _, v in read_all(cluster.broker(leader), "spread", partition)] == [b"v"]
        cluster.start_node(4)
        cluster.wait_ready()
        wait_until(
            lambda: all(4 in cluster.partition_metadata("spread", p).isr for p in range(4)
                        if 4 in cluster.partition_metadata("spread", p).replicas),
            30,
            "the observer to rejoin its ISRs",
        )
