"""One real node process: the data plane and admin RPCs end to end over gRPC.

One node is shared by the module (start-up costs about a second); every test
uses its own topic. The restart test runs last in the module and restarts
that node.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import grpc
import pytest

from proto import shoal_pb2
from proto.batch import build_batch
from tests.harness import (
    REPO_ROOT,
    Cluster,
    decode_values,
    fetch,
    make_batch,
    produce,
    read_all,
    start_cluster,
    wait_until,
)

pytestmark = [pytest.mark.multiprocess, pytest.mark.xdist_group("single-node")]

NODE = 1


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    with start_cluster(1, tmp_path_factory.mktemp("single")) as running:
        yield running


def create(cluster: Cluster, name: str, **fields) -> shoal_pb2.TopicResult:
    new_topic = shoal_pb2.NewTopic(name=name, num_partitions=fields.pop("partitions", 1), replication_factor=fields.pop("rf", -1), configs=fields.pop("configs", {}))
    response = cluster.broker(NODE).CreateTopics(shoal_pb2.CreateTopicsRequest(topics=[new_topic], **fields), timeout=15)
    return response.results[0]


def code_name(code: int) -> str:
    return shoal_pb2.ErrorCode.Name(code)


def test_produce_fetch_round_trip_with_each_acks_level(cluster: Cluster) -> None:
    cluster.create_topic("round-trip", partitions=2)
    stub = cluster.broker(NODE)
    expected = []
    for acks in (0, 1, -1):
        values = [f"acks{acks}-{i}".encode() for i in range(5)]
        result = produce(stub, "round-trip", 1, make_batch(values), acks=acks)
        assert result.error_code == shoal_pb2.NONE, result.error_message
        expected += values
    # acks=0 and acks=1 return before the HW is known to pass them; on one
    # node the HW follows at once.
    wait_until(lambda: len(read_all(stub, "round-trip", 1)) == 15, 5, "all 15 records committed")
    records = read_all(stub, "round-trip", 1)
    assert [offset for offset, _ in records] == list(range(15))
    assert [value for _, value in records] == expected
    assert read_all(stub, "round-trip", 0) == []


def test_acks_all_returns_offsets_in_order(cluster: Cluster) -> None:
    cluster.create_topic("offsets")
    stub = cluster.broker(NODE)
    bases = [produce(stub, "offsets", 0, make_batch([b"a", b"b", b"c"])).base_offset for _ in range(4)]
    assert bases == [0, 3, 6, 9]


def test_long_poll_fetch_wakes_when_records_arrive(cluster: Cluster) -> None:
    cluster.create_topic("long-poll")
    stub = cluster.broker(NODE)
    outcome: dict[str, object] = {}

    def poll() -> None:
        started = time.monotonic()
        outcome["data"] = fetch(stub, "long-poll", 0, 0, max_wait_ms=20_000, min_bytes=1)
        outcome["elapsed_s"] = time.monotonic() - started

    poller = threading.Thread(target=poll)
    poller.start()
    # Wait until the fetch is parked on the broker, proven by it not having
    # returned, then produce. (A poll that never woke would take 20 s.)
    time.sleep(0.3)
    assert "data" not in outcome
    produce(stub, "long-poll", 0, make_batch([b"wake"]))
    poller.join(timeout=30)
    data = outcome["data"]
    assert data.error_code == shoal_pb2.NONE
    assert decode_values(data.records) == [(0, b"wake")]
    assert outcome["elapsed_s"] < 15


def test_empty_fetch_with_zero_wait_returns_at_once(cluster: Cluster) -> None:
    cluster.create_topic("empty")
    data = fetch(cluster.broker(NODE), "empty", 0, 0, max_wait_ms=0)
    assert data.error_code == shoal_pb2.NONE
    assert data.records == b""
    assert data.high_watermark == 0


def test_list_offsets_earliest_latest_and_by_timestamp(cluster: Cluster) -> None:
    cluster.create_topic("list-offsets")
    stub = cluster.broker(NODE)
    base_ms = 1_700_000_000_000
    for i in range(3):
        batch = build_batch([(None, f"v{i}".encode(), (), base_ms + i * 1000)])
        assert produce(stub, "list-offsets", 0, batch).error_code == shoal_pb2.NONE

    def list_offset(timestamp: int) -> shoal_pb2.ListOffsetsPartitionResult:
        request = shoal_pb2.ListOffsetsRequest(
            partitions=[shoal_pb2.ListOffsetsPartition(topic="list-offsets", partition=0, timestamp=timestamp)]
        )
        return stub.ListOffsets(request, timeout=5).results[0]

    assert list_offset(-2).offset == 0
    assert list_offset(-1).offset == 3
    assert list_offset(base_ms + 500).offset == 1
    assert list_offset(base_ms).offset == 0
    assert list_offset(base_ms + 10_000).offset == -1
    unknown = stub.ListOffsets(
        shoal_pb2.ListOffsetsRequest(partitions=[shoal_pb2.ListOffsetsPartition(topic="nope", partition=0, timestamp=-1)]),
        timeout=5,
    ).results[0]
    assert unknown.error_code == shoal_pb2.UNKNOWN_TOPIC_OR_PARTITION


def test_delete_records_moves_log_start(cluster: Cluster) -> None:
    cluster.create_topic("delete-records")
    stub = cluster.broker(NODE)
    for i in range(5):
        produce(stub, "delete-records", 0, make_batch([f"r{i}".encode()]))
    response = stub.DeleteRecords(
        shoal_pb2.DeleteRecordsRequest(partitions=[shoal_pb2.DeleteRecordsPartition(topic="delete-records", partition=0, offset=3)]),
        timeout=5,
    )
    assert response.results[0].error_code == shoal_pb2.NONE
    assert response.results[0].low_watermark == 3
    assert fetch(stub, "delete-records", 0, 0).error_code == shoal_pb2.OFFSET_OUT_OF_RANGE
    assert [v for _, v in read_all(stub, "delete-records", 0, start=3)] == [b"r3", b"r4"]
    beyond = stub.DeleteRecords(
        shoal_pb2.DeleteRecordsRequest(partitions=[shoal_pb2.DeleteRecordsPartition(topic="delete-records", partition=0, offset=99)]),
        timeout=5,
    )
    assert beyond.results[0].error_code == shoal_pb2.OFFSET_OUT_OF_RANGE


def test_topic_admin_errors_are_typed(cluster: Cluster) -> None:
    assert create(cluster, "admin-ok").error_code == shoal_pb2.NONE
    assert code_name(create(cluster, "admin-ok").error_code) == "TOPIC_ALREADY_EXISTS"
    assert code_name(create(cluster, "bad name!").error_code) == "INVALID_TOPIC_EXCEPTION"
    assert code_name(create(cluster, "__internal-looking").error_code) == "INVALID_TOPIC_EXCEPTION"
    assert code_name(create(cluster, "zero-partitions", partitions=0).error_code) == "INVALID_PARTITIONS"
    assert code_name(create(cluster, "rf-too-big", rf=3).error_code) == "INVALID_REPLICATION_FACTOR"
    bad_config = create(cluster, "bad-config", configs={"retention.ms": "soon"})
    assert code_name(bad_config.error_code) == "INVALID_CONFIG"
    assert "retention.ms" in bad_config.error_message
    assert code_name(create(cluster, "unknown-config", configs={"no.such.config": "1"}).error_code) == "INVALID_CONFIG"
    validate_only = create(cluster, "validate-only", validate_only=True)
    assert validate_only.error_code == shoal_pb2.NONE
    metadata = cluster.broker(NODE).Metadata(shoal_pb2.MetadataRequest(topics=["validate-only"]), timeout=5)
    assert metadata.topics[0].error_code == shoal_pb2.UNKNOWN_TOPIC_OR_PARTITION

    stub = cluster.broker(NODE)
    deleted = stub.DeleteTopics(shoal_pb2.DeleteTopicsRequest(names=["admin-ok", "never-existed"]), timeout=10)
    assert [code_name(r.error_code) for r in deleted.results] == ["NONE", "UNKNOWN_TOPIC_OR_PARTITION"]
    internal = stub.DeleteTopics(shoal_pb2.DeleteTopicsRequest(names=["__consumer_offsets"]), timeout=10)
    assert code_name(internal.results[0].error_code) == "INVALID_TOPIC_EXCEPTION"

    cluster.create_topic("configurable")
    altered = stub.AlterTopicConfigs(
        shoal_pb2.AlterTopicConfigsRequest(name="configurable", set={"retention.ms": "60000"}), timeout=10
    )
    assert altered.result.error_code == shoal_pb2.NONE
    described = stub.DescribeTopics(shoal_pb2.DescribeTopicsRequest(names=["configurable"]), timeout=5)
    assert described.topics[0].configs["retention.ms"] == "60000"
    refused = stub.AlterTopicConfigs(
        shoal_pb2.AlterTopicConfigsRequest(name="configurable", set={"min.insync.replicas": "5"}), timeout=10
    )
    assert code_name(refused.result.error_code) == "INVALID_CONFIG"


def test_data_plane_errors_are_typed(cluster: Cluster) -> None:
    cluster.create_topic("errors", configs={"max.message.bytes": "2048"})
    stub = cluster.broker(NODE)
    assert code_name(produce(stub, "no-such-topic", 0, make_batch([b"x"])).error_code) == "UNKNOWN_TOPIC_OR_PARTITION"
    assert code_name(produce(stub, "errors", 7, make_batch([b"x"])).error_code) == "UNKNOWN_TOPIC_OR_PARTITION"
    corrupt = bytearray(make_batch([b"payload"]))
    corrupt[-1] ^= 0xFF
    assert code_name(produce(stub, "errors", 0, bytes(corrupt)).error_code) == "CORRUPT_MESSAGE"
    assert code_name(produce(stub, "errors", 0, b"\x00" * 10).error_code) == "CORRUPT_MESSAGE"
    assert code_name(produce(stub, "errors", 0, b"").error_code) == "CORRUPT_MESSAGE"
    too_large = produce(stub, "errors", 0, make_batch([b"x" * 4096]))
    assert code_name(too_large.error_code) == "MESSAGE_TOO_LARGE"
    # Nothing of the refused batches reached the log.
    assert fetch(stub, "errors", 0, 0).high_watermark == 0
    assert code_name(fetch(stub, "errors", 0, 5).error_code) == "OFFSET_OUT_OF_RANGE"
    internal = produce(stub, "__consumer_offsets", 0, make_batch([b"forged group state"]))
    assert code_name(internal.error_code) == "INVALID_TOPIC_EXCEPTION"
    stale = fetch(stub, "errors", 0, 0, leader_epoch=99)
    assert code_name(stale.error_code) == "UNKNOWN_LEADER_EPOCH"

    with pytest.raises(grpc.RpcError) as refused:
        stub.Produce(shoal_pb2.ProduceRequest(acks=2), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("shoal-error-code", "INVALID_REQUIRED_ACKS") in tuple(refused.value.trailing_metadata())

    raw = cluster.channel(NODE).unary_unary("/shoal.v1.Broker/Produce")
    valid = shoal_pb2.ProduceRequest(
        acks=1, partitions=[shoal_pb2.PartitionRecords(topic="errors", partition=0, records=make_batch([b"x"]))]
    ).SerializeToString()
    with pytest.raises(grpc.RpcError) as truncated:
        raw(valid[: len(valid) // 2], timeout=5)
    assert truncated.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("shoal-error-code", "INVALID_REQUEST") in tuple(truncated.value.trailing_metadata())


def test_idempotent_producer_deduplicates_retries(cluster: Cluster) -> None:
    cluster.create_topic("idempotent")
    stub = cluster.broker(NODE)
    producer = stub.InitProducerId(shoal_pb2.InitProducerIdRequest(), timeout=10)
    assert producer.error_code == shoal_pb2.NONE and producer.producer_id >= 0
    ids = dict(producer_id=producer.producer_id, producer_epoch=producer.producer_epoch)
    first = make_batch([b"a", b"b"], base_sequence=0, **ids)
    assert produce(stub, "idempotent", 0, first).base_offset == 0
    retried = produce(stub, "idempotent", 0, first)
    assert retried.error_code == shoal_pb2.NONE and retried.base_offset == 0
    assert produce(stub, "idempotent", 0, make_batch([b"c"], base_sequence=2, **ids)).base_offset == 2
    gap = produce(stub, "idempotent", 0, make_batch([b"z"], base_sequence=9, **ids))
    assert code_name(gap.error_code) == "OUT_OF_ORDER_SEQUENCE_NUMBER"
    assert [v for _, v in read_all(stub, "idempotent", 0)] == [b"a", b"b", b"c"]
    other = stub.InitProducerId(shoal_pb2.InitProducerIdRequest(), timeout=10)
    assert other.producer_id != producer.producer_id


def test_cluster_description_and_coordinators(cluster: Cluster) -> None:
    stub = cluster.broker(NODE)
    described = stub.DescribeCluster(shoal_pb2.DescribeClusterRequest(), timeout=5)
    assert described.controller_id == NODE and described.node_id == NODE
    assert described.raft_term >= 1 and described.raft_commit_index >= 1
    assert [(b.node_id, b.fenced) for b in described.brokers] == [(NODE, False)]
    assert described.offline_partitions == 0
    found = wait_until(
        lambda: (r := stub.FindCoordinator(shoal_pb2.FindCoordinatorRequest(key_type=0, keys=["g1"]), timeout=5))
        and r.coordinators[0].error_code == shoal_pb2.NONE
        and r,
        15,
        "the group coordinator",
    )
    assert found.coordinators[0].node_id == NODE
    assert found.coordinators[0].port == cluster.nodes[NODE].grpc_port


def test_metrics_endpoint_serves_node_metrics(cluster: Cluster) -> None:
    import urllib.request

    url = f"http://127.0.0.1:{cluster.nodes[NODE].metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read().decode()
    assert "shoal_" in body


def test_invalid_flags_exit_with_status_2(tmp_path) -> None:
    cases = [
        ["--node-id", "x", "--listen", "127.0.0.1:1", "--data-dir", str(tmp_path), "--controller-quorum", "1@127.0.0.1:2"],
        ["--node-id", "1", "--listen", "nohost", "--data-dir", str(tmp_path), "--controller-quorum", "1@127.0.0.1:2"],
        ["--node-id", "1", "--listen", "127.0.0.1:1", "--data-dir", str(tmp_path), "--controller-quorum", "1-127.0.0.1:2"],
        ["--node-id", "1", "--listen", "127.0.0.1:1", "--data-dir", str(tmp_path), "--controller-quorum", "1@127.0.0.1:2",
         "--set", "broker.session.timeout.ms=abc"],
        ["--node-id", "1", "--listen", "127.0.0.1:1", "--data-dir", str(tmp_path), "--controller-quorum", "1@127.0.0.1:2",
         "--set", "no.such.setting=1"],
    ]
    for args in cases:
        done = subprocess.run([sys.executable, "-m", "node", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("shoal node: "), done.stderr
        assert "Traceback" not in done.stderr


def test_zz_restart_keeps_data(cluster: Cluster) -> None:
    cluster.create_topic("durable", partitions=2)
    stub = cluster.broker(NODE)
    for i in range(10):
        produce(stub, "durable", i % 2, make_batch([f"d{i}".encode()]))
    assert cluster.stop(NODE) == 0  # SIGTERM: clean shutdown exits 0
    cluster.start_node(NODE)
    cluster.wait_ready()
    cluster.leader_of("durable", 0)
    stub = cluster.broker(NODE)
    wait_until(lambda: len(read_all(stub, "durable", 0)) == 5, 15, "partition 0 readable after restart")
    assert [v for _, v in read_all(stub, "durable", 0)] == [f"d{i}".encode() for i in range(0, 10, 2)]
    assert [v for _, v in read_all(stub, "durable", 1)] == [f"d{i}".encode() for i in range(1, 10, 2)]
    # New appends continue after the old offsets.
    assert produce(stub, "durable", 0, make_batch([b"after"])).base_offset == 5
    # A SIGKILL (no flush, no controlled shutdown) keeps acknowledged data too.
    cluster.kill(NODE)
    cluster.start_node(NODE)
    cluster.wait_ready()
    cluster.leader_of("durable", 0)
    wait_until(lambda: len(read_all(cluster.broker(NODE), "durable", 0)) == 6, 15, "partition 0 after kill -9")


def test_toml_config_file_and_precedence(tmp_path) -> None:
    from node.config import ConfigError, parse_args

    config_file = tmp_path / "node.toml"
    config_file.write_text(
        'node_id = 4\nlisten = "127.0.0.1:9500"\ndata_dir = "/tmp/x"\n'
        'controller_quorum = "4@127.0.0.1:9600,5@127.0.0.1:9601"\nmetrics_port = 9700\n'
        '[settings]\n"broker.session.timeout.ms" = 4000\n"group.share.record.lock.duration.ms" = "15000"\n'
    )
    config = parse_args(["--config", str(config_file), "--listen", "127.0.0.1:9501", "--set", "broker.session.timeout.ms=5000"])
    assert config.node_id == 4 and config.listen == "127.0.0.1:9501" and config.metrics_port == 9700
    assert [m.node_id for m in config.controller_quorum] == [4, 5] and config.raft_member.raft_port == 9600
    assert config.settings["broker.session.timeout.ms"] == 5000  # --set beats the file
    assert config.settings.raw["group.share.record.lock.duration.ms"] == "15000"  # passed to group services
    config_file.write_text('node_id = 4\nbogus = 1\n')
    with pytest.raises(ConfigError, match="unknown keys"):
        parse_args(["--config", str(config_file)])
    with pytest.raises(ConfigError, match="at most half"):
        parse_args(["--node-id", "1", "--listen", "h:1", "--data-dir", "d", "--controller-quorum", "1@h:2",
                     "--set", "broker.heartbeat.interval.ms=1500"])


def test_port_in_use_exits_with_a_message(tmp_path) -> None:
    import socket

    from tests.harness import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--node-id", "1", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path),
                "--controller-quorum", f"1@127.0.0.1:{free_port()}"]
        done = subprocess.run([sys.executable, "-m", "node", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
