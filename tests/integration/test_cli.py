"""The `shoal` command line as a user runs it: a real subprocess against real nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import REPO_ROOT, Cluster, free_base_port, start_cluster

pytestmark = [pytest.mark.multiprocess, pytest.mark.xdist_group("cluster")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_cluster(3, Path(tmp_path_factory.mktemp("cli"))) as running:
        yield running


def shoal(cluster: Cluster | None, *args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if cluster is not None:
        env["SHOAL_BOOTSTRAP"] = cluster.bootstrap
    return subprocess.run([sys.executable, "-m", "client.cli", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO_ROOT)


def as_json(result: subprocess.CompletedProcess[str]):
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def test_topics_lifecycle_in_json(cluster: Cluster) -> None:
    topic = f"cli-{uuid.uuid4().hex[:6]}"
    assert as_json(shoal(cluster, "-o", "json", "topics", "create", topic, "--partitions", "2", "--replication-factor", "3",
                         "--config", "retention.ms=60000")) == {"topic": topic, "created": True}
    listed = as_json(shoal(cluster, "-o", "json", "topics", "list"))
    assert {"name": topic, "partitions": 2, "internal": False} in listed
    [described] = as_json(shoal(cluster, "-o", "json", "topics", "describe", topic))
    assert [p["partition"] for p in described["partitions"]] == [0, 1]
    assert described["configs"]["retention.ms"] == "60000"
    altered = as_json(shoal(cluster, "-o", "json", "topics", "alter", topic, "--set", "retention.ms=120000"))
    assert altered["configs"]["retention.ms"] == "120000"
    duplicate = shoal(cluster, "-o", "json", "topics", "create", topic, "--partitions", "2")
    assert duplicate.returncode == 1
    assert json.loads(duplicate.stdout)["error"] == "TOPIC_ALREADY_EXISTS"
    assert as_json(shoal(cluster, "-o", "json", "topics", "delete", topic)) == {topic: None}


def test_produce_then_consume_and_share_consume(cluster: Cluster) -> None:
    topic = f"cli-{uuid.uuid4().hex[:6]}"
    as_json(shoal(cluster, "-o", "json", "topics", "create", topic, "--partitions", "2"))
    lines = "".join(f"k{i}:v{i}\n" for i in range(20))
    produced = as_json(shoal(cluster, "-o", "json", "produce", topic, "--key-separator", ":", stdin=lines))
    assert produced["records"] == 20 and produced["failed"] == 0
    consumed = shoal(cluster, "-o", "json", "consume", topic, "--from-beginning", "--max-records", "20", "--timeout", "15")
    assert consumed.returncode == 0, consumed.stderr
    records = [json.loads(line) for line in consumed.stdout.splitlines()]
    assert sorted(r["value"] for r in records) == sorted(f"v{i}" for i in range(20))
    assert all(r["key"] == "k" + r["value"][1:] for r in records)
    text = shoal(cluster, "consume", topic, "--from-beginning", "--partition", "0", "--timeout", "3")
    assert text.returncode == 0 and all(line.startswith("v") for line in text.stdout.splitlines())

    group = f"cli-sg-{uuid.uuid4().hex[:6]}"
    configured = as_json(shoal(cluster, "-o", "json", "groups", "config", group, "--set", "share.auto.offset.reset=earliest"))
    assert {"name": "share.auto.offset.reset", "value": "earliest", "is_default": False} in configured["configs"]
    shared = shoal(cluster, "-o", "json", "share-consume", topic, "--group", group, "--max-records", "20", "--timeout", "20")
    assert shared.returncode == 0, shared.stderr
    share_records = [json.loads(line) for line in shared.stdout.splitlines()]
    assert sorted(r["value"] for r in share_records) == sorted(f"v{i}" for i in range(20))
    assert {r["delivery_count"] for r in share_records} == {1}
    groups = as_json(shoal(cluster, "-o", "json", "groups", "list", "--type", "share"))
    assert any(g["group_id"] == group and g["type"] == "share" for g in groups)
    offsets = as_json(shoal(cluster, "-o", "json", "share-groups", "describe", group, "--offsets"))
    assert sum(o["start_offset"] for o in offsets["offsets"]) == 20
    window = shoal(cluster, "share-groups", "describe", group, "--state")
    assert window.returncode == 0 and "legend" in window.stdout
    dry = as_json(shoal(cluster, "-o", "json", "share-groups", "reset-offsets", group, "--to-earliest", "--all-topics", "--dry-run"))
    assert not dry["executed"] and {o["new_start_offset"] for o in dry["offsets"]} == {0}
    done = as_json(shoal(cluster, "-o", "json", "share-groups", "reset-offsets", group, "--to-earliest", "--topic", topic, "--execute"))
    assert done["executed"]
    assert as_json(shoal(cluster, "-o", "json", "share-groups", "delete", group)) == {group: None}


def test_cluster_status(cluster: Cluster) -> None:
    status = as_json(shoal(cluster, "-o", "json", "cluster", "status"))
    assert status["controller_id"] in cluster.node_ids
    assert sorted(b["node_id"] for b in status["brokers"]) == cluster.node_ids
    text = shoal(cluster, "cluster", "status")
    assert text.returncode == 0 and "active controller" in text.stdout


@pytest.mark.parametrize(
    ("args", "status", "fragment"),
    [
        (("topics", "create", "x", "--partitions", "0"), 2, "--partitions"),
        (("topics", "alter", "x"), 2, "--set"),
        (("produce", "t", "--acks", "2"), 2, "--acks"),
        (("share-groups", "reset-offsets", "g", "--to-earliest", "--all-topics"), 2, "--dry-run or --execute"),
        (("share-groups", "reset-offsets", "g", "--by-duration", "1 hour", "--all-topics", "--dry-run"), 2, "ISO-8601"),
        (("consume", "t", "--group", "g", "--partition", "1"), 2, "--partition"),
        (("topics", "create", "x", "--config", "novalue"), 2, "key=value"),
    ],
)
def test_usage_errors_exit_2(cluster: Cluster, args: tuple[str, ...], status: int, fragment: str) -> None:
    result = shoal(cluster, *args)
    assert result.returncode == status, result.stdout + result.stderr
    assert fragment in result.stderr


def test_operation_failures_exit_1_with_named_errors(cluster: Cluster) -> None:
    missing = shoal(cluster, "-o", "json", "topics", "describe", "no-such-topic")
    assert missing.returncode == 1 and json.loads(missing.stdout)["error"] == "UNKNOWN_TOPIC_OR_PARTITION"
    not_share = shoal(cluster, "share-groups", "describe", f"nobody-{uuid.uuid4().hex[:6]}")
    assert not_share.returncode == 1 and "GROUP_ID_NOT_FOUND" in not_share.stderr
    bad_config = shoal(cluster, "topics", "create", f"cli-{uuid.uuid4().hex[:6]}", "--config", "retention.ms=soon")
    assert bad_config.returncode == 1 and "INVALID_CONFIG" in bad_config.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("produce", "no-such-topic"),
        ("share-consume", "no-such-topic", "--group", "g"),
        ("consume", "no-such-topic", "--group", "g"),
    ],
    ids=["produce", "share-consume", "consume-group"],
)
def test_data_commands_fail_fast_on_a_missing_topic(cluster: Cluster, args: tuple[str, ...]) -> None:
    # The clients would wait for the topic (max.block.ms, or forever); at a terminal a typo fails at once.
    result = shoal(cluster, "-o", "json", *args, stdin="x\n", timeout=10)
    assert result.returncode == 1, result.stdout + result.stderr
    assert json.loads(result.stdout)["error"] == "UNKNOWN_TOPIC_OR_PARTITION"


def test_unreachable_cluster_is_a_typed_failure() -> None:
    env_cluster = None
    result = shoal(env_cluster, "-b", "127.0.0.1:1", "-o", "json", "topics", "list")
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"] == "BROKER_NOT_AVAILABLE"


def test_cluster_up_detached_status_and_down(tmp_path: Path) -> None:
    base = free_base_port()
    data_dir = tmp_path / "local"
    try:
        up = shoal(None, "-o", "json", "cluster", "up", "--nodes", "3", "--base-port", str(base),
                   "--data-dir", str(data_dir), "--detach", timeout=120)
        info = as_json(up)
        assert info["bootstrap"] == ",".join(f"127.0.0.1:{base + i}" for i in range(3))
        manifest = json.loads((data_dir / "cluster.json").read_text())
        assert [n["metrics_port"] for n in manifest["nodes"]] == [base + 200 + i for i in range(3)]
        assert f"127.0.0.1:{base + 200}" in (data_dir / "prometheus.yml").read_text()
        status = as_json(shoal(None, "-b", info["bootstrap"], "-o", "json", "cluster", "status"))
        assert sorted(b["node_id"] for b in status["brokers"]) == [1, 2, 3]
    finally:
        down = shoal(None, "-o", "json", "cluster", "down", "--data-dir", str(data_dir), timeout=90)
    assert down.returncode == 0, down.stderr
    assert set(json.loads(down.stdout).values()) == {"stopped"}
