"""Node metrics: collector output (names, labels, values), adapters over real objects,
the gRPC interceptor on a real aio server, and the /metrics HTTP endpoint.

Exposition is parsed with prometheus_client.parser, so a name or label that
does not follow the text format fails here, not in Prometheus.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cluster.metadata import (
    AlterPartition,
    CreateTopic,
    FenceBroker,
    MetadataState,
    RegisterBroker,
    UnfenceBroker,
)
from node.metrics import (
    ControllerSnapshot,
    GroupsSnapshot,
    LatencyRecorder,
    NodeMetrics,
    PartitionReplicaSample,
    QuorumSnapshot,
    ReplicationSnapshot,
    ShareCoordinatorSnapshot,
    SharePartitionSample,
    ShareSnapshot,
    controller_source,
    quorum_source,
    replication_source,
)
from proto import shoal_pb2, shoal_pb2_grpc

ALLOWED_LABELS = {"group", "topic", "partition", "type", "state", "rpc", "code", "le"}


def scrape(metrics: NodeMetrics) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """name -> [(sample name, labels, value)] of a real exposition."""
    text = generate_latest(metrics.registry).decode()
    result: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        result[family.name] = [(s.name, dict(s.labels), s.value) for s in family.samples]
    return result


def value(families, sample_name: str, **labels: str) -> float:
    family_name = sample_name
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if sample_name.endswith(suffix) and sample_name[: -len(suffix)] in families:
            family_name = sample_name[: -len(suffix)]
    matches = [v for (name, sample_labels, v) in families[family_name] if name == sample_name and sample_labels == labels]
    assert len(matches) == 1, f"{sample_name}{labels}: {families.get(family_name)}"
    return matches[0]


# ---------------------------------------------------------------------- LatencyRecorder


def test_latency_recorder_buckets_are_cumulative_and_le_inclusive() -> None:
    recorder = LatencyRecorder((0.01, 0.1, 1.0))
    for seconds in (0.005, 0.01, 0.05, 0.1, 0.5, 2.0, 7.0):
        recorder.observe(seconds)
    recorder.observe_ms(20)  # 0.02 s
    assert recorder.cumulative_buckets() == [("0.01", 2), ("0.1", 5), ("1.0", 6), ("+Inf", 8)]
    assert recorder.count == 8
    assert recorder.sum == pytest.approx(0.005 + 0.01 + 0.05 + 0.1 + 0.5 + 2.0 + 7.0 + 0.02)


def test_latency_recorder_refuses_unsorted_bounds() -> None:
    with pytest.raises(AssertionError):
        LatencyRecorder((0.1, 0.01))


# ---------------------------------------------------------------------- collector


def full_metrics() -> NodeMetrics:
    metrics = NodeMetrics(node_id=1)
    load = LatencyRecorder((0.01, 0.1, 1.0))
    load.observe(0.05)
    load.observe(0.5)
    writes = LatencyRecorder((0.001, 0.01))
    writes.observe(0.0005)
    metrics.sources.replication = lambda: ReplicationSnapshot(
        partitions=[
            PartitionReplicaSample("orders", 0, True, 4096, 10, 120, 115, replicas=3, isr=2, max_follower_lag_records=7),
            PartitionReplicaSample("orders", 1, False, 2048, 0, 60, 60, replicas=3, isr=3, follower_lag_records=4),
            PartitionReplicaSample("orders", 2, True, 100, 0, 5, 5, replicas=3, isr=3, max_follower_lag_records=0),
        ],
        isr_shrinks_total=3,
        isr_expands_total=2,
        produced_bytes_total=9000,
        fetched_bytes_total=8000,
    )
    metrics.sources.quorum = lambda: QuorumSnapshot(term=4, commit_index=77, is_leader=True, has_quorum=True)
    metrics.sources.controller = lambda: ControllerSnapshot(
        active=True, brokers_alive=2, brokers_fenced=1, offline_partitions=1, leader_elections_total=5, fenced_brokers_total=1
    )
    metrics.sources.groups = lambda: GroupsSnapshot(
        groups={("share", "Stable"): 2, ("share", "Empty"): 1, ("consumer", "Stable"): 1},
        members={"share": 5, "consumer": 2},
        rebalances_total={"share": 9, "consumer": 3},
    )
    metrics.sources.share = lambda: ShareSnapshot(
        partitions=[
            SharePartitionSample(
                group="g1",
                topic="orders",
                partition=0,
                start_offset=40,
                end_offset=55,
                lag_records=70,
                in_flight_records=15,
                in_flight_runs=3,
                acquired_records_total=60,
                acknowledged_records_total={"accept": 30, "release": 4, "reject": 2},
                lock_expired_records_total=6,
                delivery_limit_archived_records_total=1,
            )
        ],
        fetch_requests_total=12,
        fetch_requests_failed_total=1,
        acknowledge_requests_total=8,
        acknowledge_requests_failed_total=2,
        partition_load=load,
    )
    metrics.sources.share_coordinator = lambda: ShareCoordinatorSnapshot(writes_total=21, writes_failed_total=1, write_latency=writes)
    return metrics


def test_collector_names_labels_and_values() -> None:
    families = scrape(full_metrics())
    # Replication, per partition and per node.
    assert value(families, "shoal_log_size_bytes", topic="orders", partition="1") == 2048
    assert value(families, "shoal_log_start_offset", topic="orders", partition="0") == 10
    assert value(families, "shoal_log_end_offset", topic="orders", partition="0") == 120
    assert value(families, "shoal_partition_high_watermark", topic="orders", partition="0") == 115
    # A follower's HW and lag are the leader's business: not reported here.
    assert [s for s in families["shoal_partition_high_watermark"] if s[1]["partition"] == "1"] == []
    assert value(families, "shoal_replication_lag_records", topic="orders", partition="0") == 7
    # Per follower (Kafka's replica-fetcher lag): each follower reports its own partitions.
    assert value(families, "shoal_follower_lag_records", topic="orders", partition="1") == 4
    assert [s for s in families["shoal_follower_lag_records"] if s[1]["partition"] != "1"] == []
    assert value(families, "shoal_under_replicated_partitions") == 1
    assert value(families, "shoal_leader_partitions") == 2
    assert value(families, "shoal_replica_partitions") == 3
    assert value(families, "shoal_isr_shrinks_total") == 3
    assert value(families, "shoal_isr_expands_total") == 2
    # Quorum and controller.
    assert value(families, "shoal_raft_term") == 4
    assert value(families, "shoal_raft_commit_index") == 77
    assert value(families, "shoal_controller_active") == 1
    assert value(families, "shoal_brokers", state="alive") == 2
    assert value(families, "shoal_brokers", state="fenced") == 1
    assert value(families, "shoal_offline_partitions") == 1
    assert value(families, "shoal_partition_leader_elections_total") == 5
    # Groups.
    assert value(families, "shoal_groups", type="share", state="Stable") == 2
    assert value(families, "shoal_groups", type="consumer", state="Stable") == 1
    assert value(families, "shoal_group_members", type="share") == 5
    assert value(families, "shoal_group_rebalances_total", type="share") == 9
    # Share partitions.
    gtp = {"group": "g1", "topic": "orders", "partition": "0"}
    assert value(families, "shoal_share_acquired_records_total", **gtp) == 60
    assert value(families, "shoal_share_acknowledged_records_total", **gtp, type="accept") == 30
    assert value(families, "shoal_share_acknowledged_records_total", **gtp, type="release") == 4
    assert value(families, "shoal_share_acknowledged_records_total", **gtp, type="reject") == 2
    # Every type is present from the start, so rate() works before the first renew.
    assert value(families, "shoal_share_acknowledged_records_total", **gtp, type="renew") == 0
    assert value(families, "shoal_share_lock_expired_records_total", **gtp) == 6
    assert value(families, "shoal_share_delivery_limit_archived_records_total", **gtp) == 1
    assert value(families, "shoal_share_in_flight_records", **gtp) == 15
    assert value(families, "shoal_share_in_flight_runs", **gtp) == 3
    assert value(families, "shoal_share_partition_start_offset", **gtp) == 40
    assert value(families, "shoal_share_partition_end_offset", **gtp) == 55
    assert value(families, "shoal_share_partition_lag_records", **gtp) == 70
    assert value(families, "shoal_share_fetch_requests_total") == 12
    assert value(families, "shoal_share_fetch_requests_failed_total") == 1
    assert value(families, "shoal_share_acknowledge_requests_total") == 8
    assert value(families, "shoal_share_acknowledge_requests_failed_total") == 2
    assert value(families, "shoal_share_partition_load_seconds_bucket", le="0.1") == 1
    assert value(families, "shoal_share_partition_load_seconds_bucket", le="+Inf") == 2
    assert value(families, "shoal_share_partition_load_seconds_count") == 2
    assert value(families, "shoal_share_partition_load_seconds_sum") == pytest.approx(0.55)
    assert value(families, "shoal_share_state_writes_total") == 21
    assert value(families, "shoal_share_state_write_seconds_count") == 1
    assert value(families, "shoal_share_state_write_seconds_bucket", le="0.001") == 1


def test_every_family_follows_the_naming_rules() -> None:
    text = generate_latest(full_metrics().registry).decode()
    families = list(text_string_to_metric_families(text))
    assert len(families) >= 40
    for family in families:
        assert family.name.startswith("shoal_"), family.name
        if family.type == "counter":
            assert all(sample.name.endswith(("_total", "_created")) for sample in family.samples), family.name
        if family.type == "gauge":
            assert not family.name.endswith("_total"), family.name
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, (family.name, sample.labels)
    # Durations are in seconds, sizes in bytes: no other unit suffixes.
    assert not any(f.name.endswith(("_ms", "_milliseconds", "_kb")) for f in families)


def test_a_failing_source_leaves_only_its_own_families_out(caplog) -> None:
    metrics = full_metrics()

    def broken() -> GroupsSnapshot:
        raise KeyError("coordinator shard closed under us")

    metrics.sources.groups = broken
    families = scrape(metrics)
    assert "shoal_groups" not in families
    assert value(families, "shoal_raft_term") == 4
    assert "metric source groups failed" in caplog.text


def test_unwired_sources_expose_nothing_but_rpc_families() -> None:
    metrics = NodeMetrics(node_id=2)
    families = scrape(metrics)
    assert set(families) == {
        "shoal_rpc_duration_seconds",
        "shoal_rpc_request_bytes",
        "shoal_rpc_response_bytes",
        "shoal_rpc_errors",
    }


# ---------------------------------------------------------------------- adapters over real objects


def image_with_brokers_and_topic() -> MetadataState:
    state = MetadataState()
    for broker_id in (1, 2, 3):
        assert not hasattr(state.apply(RegisterBroker(broker_id, "127.0.0.1", 9000 + broker_id, f"inc-{broker_id}")), "code")
        epoch = state.broker(broker_id).broker_epoch
        state.apply(UnfenceBroker(broker_id, epoch))
    result = state.apply(CreateTopic(name="orders", topic_id="t" * 32, replica_assignment=((1, 2, 3), (2, 3, 1))))
    assert not hasattr(result, "code"), result
    return state


def test_controller_source_reads_the_image_only_when_active() -> None:
    state = image_with_brokers_and_topic()

    class Controller:  # the two attributes the adapter reads, as ControllerService keeps them
        active = True
        elections_proposed_total = 4
        fenced_brokers_total = 1

    controller = Controller()
    read = controller_source(controller, lambda: state.image)
    snap = read()
    assert (snap.active, snap.brokers_alive, snap.brokers_fenced, snap.offline_partitions) == (True, 3, 0, 0)
    state.apply(FenceBroker(3, state.broker(3).broker_epoch))
    assert read().brokers_fenced == 1
    controller.active = False
    assert read() == ControllerSnapshot(active=False)


def test_quorum_source_maps_status() -> None:
    class Quorum:
        def status(self) -> dict[str, object]:
            return {"term": 3, "commit_index": 41, "has_quorum": True, "raft_state": "leader"}

        def is_leader(self) -> bool:
            return True

    assert quorum_source(Quorum())() == QuorumSnapshot(term=3, commit_index=41, is_leader=True, has_quorum=True)


def test_replication_source_over_a_real_replica_manager(tmp_path: Path) -> None:
    from node.config import parse_settings
    from node.replica_manager import ReplicaManager

    state = image_with_brokers_and_topic()

    async def never_propose(command: object, timeout_s: float) -> object:
        raise AssertionError("no ISR change expected in this test")

    async def scenario() -> None:
        manager = ReplicaManager(1, tmp_path, parse_settings({}), never_propose)
        try:
            manager.apply_metadata(state.image, caught_up=True)
            read = replication_source(manager)
            snap = read()
            by_partition = {p.partition: p for p in snap.partitions}
            assert set(by_partition) == {0, 1}
            assert by_partition[0].is_leader and not by_partition[1].is_leader
            assert by_partition[0].replicas == 3 and by_partition[0].isr == 3
            assert by_partition[0].log_end_offset == 0 and by_partition[0].log_size_bytes >= 0
            assert by_partition[1].max_follower_lag_records == -1
            # A follower reports its own lag once it has heard from the leader.
            assert by_partition[1].follower_lag_records == -1
            manager.replicas[("orders", 1)].leader_high_watermark = 25
            assert {p.partition: p for p in read().partitions}[1].follower_lag_records == 25
            assert by_partition[0].follower_lag_records == -1
            # The ISR shrinks in the applied metadata: the leader counts the
            # partition as under-replicated.
            registration = state.partition("orders", 0)
            result = state.apply(
                AlterPartition(
                    topic="orders",
                    partition=0,
                    leader_id=1,
                    leader_epoch=registration.leader_epoch,
                    partition_epoch=registration.partition_epoch,
                    new_isr=(1, 2),
                )
            )
            assert not hasattr(result, "code"), result
            manager.apply_metadata(state.image, caught_up=True)
            metrics = NodeMetrics(1)
            metrics.sources.replication = read
            families = scrape(metrics)
            assert value(families, "shoal_under_replicated_partitions") == 1
            assert value(families, "shoal_leader_partitions") == 1
            assert value(families, "shoal_replica_partitions") == 2
        finally:
            await manager.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------------- interceptor on a real server


class _Servicer(shoal_pb2_grpc.BrokerServicer):
    async def DescribeCluster(self, request, context):
        return shoal_pb2.DescribeClusterResponse(cluster_id="c" * 20, controller_id=1)

    async def CreateTopics(self, request, context):
        # As node/grpc_errors.abort_with does: the code in the trailer, then abort.
        context.set_trailing_metadata((("shoal-error-code", "TOPIC_ALREADY_EXISTS"),))
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "exists")

    async def Metadata(self, request, context):
        raise RuntimeError("a programmer error")


def test_interceptor_counts_latency_bytes_and_error_codes() -> None:
    metrics = NodeMetrics(1)

    async def scenario() -> tuple[int, int]:
        server = grpc.aio.server(interceptors=[metrics.interceptor])
        shoal_pb2_grpc.add_BrokerServicer_to_server(_Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = shoal_pb2_grpc.BrokerStub(channel)
                response_size = 0
                for _ in range(3):
                    response = await stub.DescribeCluster(shoal_pb2.DescribeClusterRequest())
                    response_size += response.ByteSize()
                request = shoal_pb2.CreateTopicsRequest(topics=[shoal_pb2.NewTopic(name="orders", num_partitions=1)])
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await stub.CreateTopics(request)
                assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                with pytest.raises(grpc.aio.AioRpcError) as crashed:
                    await stub.Metadata(shoal_pb2.MetadataRequest())
                assert crashed.value.code() == grpc.StatusCode.UNKNOWN
                return response_size, request.ByteSize()
        finally:
            await server.stop(None)

    response_size, create_size = asyncio.run(scenario())
    families = scrape(metrics)
    assert value(families, "shoal_rpc_duration_seconds_count", rpc="DescribeCluster") == 3
    assert value(families, "shoal_rpc_duration_seconds_count", rpc="CreateTopics") == 1
    assert value(families, "shoal_rpc_response_bytes_total", rpc="DescribeCluster") == response_size
    assert value(families, "shoal_rpc_request_bytes_total", rpc="CreateTopics") == create_size
    assert value(families, "shoal_rpc_errors_total", rpc="CreateTopics", code="TOPIC_ALREADY_EXISTS") == 1
    assert value(families, "shoal_rpc_errors_total", rpc="Metadata", code="UNKNOWN") == 1
    assert not [s for s in families["shoal_rpc_errors"] if s[1]["rpc"] == "DescribeCluster"]


# ---------------------------------------------------------------------- HTTP


def test_metrics_server_serves_the_registry_on_loopback() -> None:
    metrics = full_metrics()
    port = metrics.start_server(0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        names = {family.name for family in text_string_to_metric_families(text)}
        assert {"shoal_controller_active", "shoal_share_acknowledged_records", "shoal_raft_term"} <= names
    finally:
        metrics.stop_server()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the server must be closed after stop_server()"


# ---------------------------------------------------------------------- share adapters over real state machines


def test_share_source_over_real_share_partitions() -> None:
    from coordinator.share_partition import (
        AcknowledgeType,
        AcknowledgementBatch,
        AcquireMode,
        SharePartition,
        SharePartitionSettings,
    )
    from coordinator.share_state import ShareKey
    from node.metrics import share_source

    partition = SharePartition(SharePartitionSettings(), start_offset=0)
    _, change = partition.acquire("member-a", [(0, 9)], 10, AcquireMode.BATCH_OPTIMIZED, now_ms=1_000)
    accepted = partition.acknowledge(
        "member-a", [AcknowledgementBatch(0, 5, (AcknowledgeType.ACCEPT,)), AcknowledgementBatch(6, 6, (AcknowledgeType.RELEASE,))], now_ms=1_001
    )

    class Holder:  # the two attributes a ShareManager holder has that the adapter reads
        def __init__(self, key: ShareKey, partition: SharePartition | None) -> None:
            self.key = key
            self.partition = partition

    class Manager:  # ShareManager's node-wide counters, counted from the real changes
        def __init__(self) -> None:
            self._holders = {
                ShareKey("g1", "orders", 0): Holder(ShareKey("g1", "orders", 0), partition),
                ShareKey("g1", "orders", 1): Holder(ShareKey("g1", "orders", 1), None),  # still loading
            }
            self.acquired_records_total = change.counts.get("acquired", 0)
            self.acknowledged_records_total = {k: accepted.counts[k] for k in ("accept", "release")}
            self.lock_expirations_total = 0
            self.delivery_limit_archives_total = 0
            self.fetch_requests_total = 3
            self.fetch_failures_total = 0
            self.acknowledge_requests_total = 1
            self.acknowledge_failures_total = 0
            self.loads_total = 1
            self.last_load_time_ms = 12

    class Local:
        def high_watermark(self, topic: str, partition_id: int) -> int:
            return 25

    metrics = NodeMetrics(1)
    metrics.sources.share = share_source(Manager(), Local())
    families = scrape(metrics)
    gtp = {"group": "g1", "topic": "orders", "partition": "0"}
    assert value(families, "shoal_share_partition_start_offset", **gtp) == 6
    assert value(families, "shoal_share_partition_end_offset", **gtp) == 10
    # 25 records in the log, 6 delivery-complete below the SPSO: 19 to go.
    assert value(families, "shoal_share_partition_lag_records", **gtp) == 19
    assert value(families, "shoal_share_in_flight_records", **gtp) == 4
    assert value(families, "shoal_share_in_flight_runs", **gtp) == len(partition.runs())
    assert [s for s in families["shoal_share_partition_lag_records"] if s[1]["partition"] == "1"] == []
    # Node-wide counters: the same names without the partition labels.
    assert value(families, "shoal_share_acquired_records_total") == 10
    assert value(families, "shoal_share_acknowledged_records_total", type="accept") == 6
    assert value(families, "shoal_share_acknowledged_records_total", type="release") == 1
    assert value(families, "shoal_share_partition_loads_total") == 1
    assert value(families, "shoal_share_partition_last_load_seconds") == pytest.approx(0.012)


# ---------------------------------------------------------------------- client metrics


def test_client_exporter_maps_a_real_share_consumer() -> None:
    from client.metrics import ClientMetricsExporter
    from client.share_consumer import ShareConsumer

    consumer = ShareConsumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "g"})
    try:
        exporter = ClientMetricsExporter(consumer, "share_consumer")
        families = {f.name: f for f in text_string_to_metric_families(generate_latest(exporter.registry).decode())}
        assert families["shoal_share_consumer_heartbeats"].type == "counter"
        assert families["shoal_share_consumer_fetched_records"].type == "counter"
        assert families["shoal_share_consumer_acknowledgements_sent"].type == "counter"
        assert families["shoal_share_consumer_acknowledgements_failed"].type == "counter"
        assert families["shoal_share_consumer_fetch_latency_seconds"].type == "summary"
        assert families["shoal_share_consumer_heartbeat_response_seconds"].type == "summary"
        # Never polled: "seconds since last poll" is unknown, so it is absent rather than 0.
        assert "shoal_share_consumer_seconds_since_last_poll" not in families
        assert not any(name.endswith("_rate") for name in families)
    finally:
        consumer.close()


def test_client_exporter_converts_units_and_derives_summaries() -> None:
    from client.metrics import ClientMetricsExporter, attach_exporter

    class Client:
        def __init__(self) -> None:
            self.values: dict[str, object] = {
                "heartbeat_total": 10,
                "heartbeat_rate": 0.5,
                "heartbeat_response_time_avg_ms": 4.0,
                "heartbeat_response_time_max_ms": 9.0,
                "last_poll_seconds_ago": 1.5,
                "records_fetched_total": 300,
                "fetch_total": 4,
                "fetch_size_avg": 1000.0,
                "fetch_size_max": 2500,
                "fetch_latency_avg_ms": 20.0,
                "fetch_latency_max_ms": 50.0,
                "acknowledgements_send_total": 290,
                "acknowledgements_error_total": 2,
                "sessions_open": 2,  # not in the table: exported by rule
                "session_epoch_id": 7,  # an id: skipped
            }

        def metrics(self) -> dict[str, object]:
            return dict(self.values)

    client = Client()
    assert attach_exporter(client, "share_consumer", None) is None
    exporter = attach_exporter(client, "share_consumer", 0)
    assert exporter is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        exporter.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}

    def get(name: str) -> float:
        return samples[(name, ())]

    assert get("shoal_share_consumer_heartbeats_total") == 10
    assert get("shoal_share_consumer_heartbeat_response_seconds_count") == 10
    assert get("shoal_share_consumer_heartbeat_response_seconds_sum") == pytest.approx(0.04)
    assert get("shoal_share_consumer_heartbeat_response_max_seconds") == pytest.approx(0.009)
    assert get("shoal_share_consumer_seconds_since_last_poll") == 1.5
    assert get("shoal_share_consumer_fetch_size_bytes_sum") == 4000
    assert get("shoal_share_consumer_fetch_latency_seconds_sum") == pytest.approx(0.08)
    assert get("shoal_share_consumer_fetch_latency_seconds_count") == 4
    assert get("shoal_share_consumer_acknowledgements_failed_total") == 2
    assert get("shoal_share_consumer_sessions_open") == 2
    assert not any("epoch_id" in name for name, _ in samples)
    with pytest.raises(ValueError):
        ClientMetricsExporter(client, "admin")


def test_share_and_group_metrics_over_the_real_services(tmp_path: Path) -> None:
    """The adapters read exactly the names the real objects keep: per-partition record
    counters (``holder.counts``), the load histogram (``ShareManager.load_time``), the
    coordinator's write histogram (``ShareCoordinator.write_latency``) and rebalances
    (``GroupCoordinator.rebalances_total``)."""
    from node.metrics import groups_source, share_coordinator_source, share_source
    from tests.unit.test_share_manager import Node, acquired, fetch_request, set_earliest

    async def scenario() -> dict:
        node = Node(tmp_path)
        services = await node.start()
        await set_earliest(services)
        joined = await services.ShareGroupHeartbeat(shoal_pb2.ShareGroupHeartbeatRequest(
            group_id="g", member_id="m1", member_epoch=0, subscribed_topics=shoal_pb2.SubscribedTopics(names=["t"])),
            None)
        assert joined.error_code == 0, joined
        await services.ConsumerGroupHeartbeat(shoal_pb2.ConsumerGroupHeartbeatRequest(
            group_id="cg", member_id="c1", member_epoch=0, subscribed_topics=shoal_pb2.SubscribedTopics(names=["t"])),
            None)
        await node.produce(4)
        first = await services.share_manager.ShareFetch(fetch_request("m1", 0))
        assert acquired(first) == [(0, 3, 1)]
        second = await services.share_manager.ShareFetch(fetch_request("m1", 1, acks=[(0, 2, 1), (3, 3, 2)]))
        assert second.partitions[0].acknowledge_error_code == 0
        metrics = NodeMetrics(1)
        metrics.sources.share = share_source(services.share_manager, node.local)
        metrics.sources.share_coordinator = share_coordinator_source(services.share_coordinator, services.share_manager)
        metrics.sources.groups = groups_source(services.group_coordinator)
        families = scrape(metrics)
        await services.stop()
        node.local.close()
        return families

    families = asyncio.run(scenario())
    gtp = {"group": "g", "topic": "t", "partition": "0"}
    # Record 3 was released and acquired again by the second fetch: 5 acquisitions.
    assert value(families, "shoal_share_acquired_records_total", **gtp) == 5
    assert value(families, "shoal_share_acknowledged_records_total", type="accept", **gtp) == 3
    assert value(families, "shoal_share_acknowledged_records_total", type="release", **gtp) == 1
    assert value(families, "shoal_share_partition_load_seconds_count") == 1
    assert "shoal_share_partition_loads" not in families  # the histogram replaces the fallback
    # One durable write per fetch: the first fetch's acquisition, then the second
    # fetch's acknowledgements and re-acquisition coalesced into one.
    assert value(families, "shoal_share_state_write_seconds_count") == 2
    assert value(families, "shoal_share_state_write_seconds_bucket", le="+Inf") == 2
    assert value(families, "shoal_share_state_write_seconds_sum") >= 0
    assert value(families, "shoal_group_rebalances_total", type="share") == 1
    assert value(families, "shoal_group_rebalances_total", type="consumer") == 1
