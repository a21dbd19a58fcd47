"""A real Prometheus scraping a real 3-node cluster: the node metrics, the
scrape config that run-prometheus.sh renders, and the recording rules, checked
through Prometheus's HTTP API.

The share group is driven with the real clients: records are accepted or
rejected in a known split, so the acknowledged counters must add up to
exactly those numbers across the nodes; lag is seen to rise when records are
produced and fall to 0 once they are drained.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from client import AcknowledgeType, Admin, NewTopic, Producer, ShareConsumer
from tests.harness import REPO_ROOT, Cluster, free_port, start_cluster, wait_until

pytestmark = [pytest.mark.multiprocess, pytest.mark.xdist_group("prometheus")]

PARTITIONS = 3


def _prometheus_binary() -> str:
    if shutil.which("prometheus") is None:
        # check.sh installs Debian's prometheus package when it can.
        result = subprocess.run([str(REPO_ROOT / "deploy/prometheus/check.sh")], capture_output=True, text=True, timeout=600)
        if shutil.which("prometheus") is None:
            pytest.skip(f"the prometheus binary cannot be installed here: {result.stderr.strip()[-500:]}")
    return shutil.which("prometheus")  # type: ignore[return-value]


class PrometheusApi:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> dict:
        url = f"{self.base}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_cluster(3, Path(tmp_path_factory.mktemp("prom-cluster"))) as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusApi]:
    _prometheus_binary()
    data_dir = Path(tmp_path_factory.mktemp("prom-data"))
    # The format `shoal cluster up` writes (client/cli/cluster.py).
    targets = ", ".join(f'"127.0.0.1:{cluster.nodes[n].metrics_port}"' for n in cluster.node_ids)
    (data_dir / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 5s\nscrape_configs:\n  - job_name: shoal\n"
        f"    static_configs:\n      - targets: [{targets}]\n"
    )
    port = free_port()
    log_path = data_dir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(REPO_ROOT / "deploy/prometheus/run-prometheus.sh"), str(data_dir), str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api = PrometheusApi(port)
    try:
        def ready() -> bool:
            assert process.poll() is None, f"prometheus exited: {log_path.read_text()[-2000:]}"
            with urllib.request.urlopen(f"{api.base}/-/ready", timeout=2) as response:
                return response.status == 200

        wait_until(ready, 30, "prometheus to be ready")
        yield api
    finally:
        # run-prometheus.sh execs prometheus, so this PID is prometheus itself.
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _wait_value(api: PrometheusApi, expr: str, expected: float, timeout_s: float = 40.0) -> None:
    seen: list[float | None] = []

    def check() -> bool:
        seen.append(api.scalar(expr))
        return seen[-1] == expected

    try:
        wait_until(check, timeout_s, f"{expr} == {expected}", interval_s=0.5)
    except TimeoutError as exc:
        raise AssertionError(f"{expr}: expected {expected}, last values {seen[-5:]}") from exc


def _produce(cluster: Cluster, topic: str, count: int, start: int) -> None:
    with Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 1}) as producer:
        for i in range(start, start + count):
            producer.send(topic, str(i), partition=i % PARTITIONS)
        producer.flush(30)


def _drain(consumer: ShareConsumer, count: int, reject_every: int) -> tuple[int, int]:
    """Poll until ``count`` records came; reject every ``reject_every``-th value, accept the rest."""
    accepted = rejected = 0
    deadline = time.monotonic() + 60
    while accepted + rejected < count:
        assert time.monotonic() < deadline, f"only {accepted + rejected} of {count} records arrived"
        for record in consumer.poll(0.5):
            if int(record.value) % reject_every == 0:
                consumer.acknowledge(record, AcknowledgeType.REJECT)
                rejected += 1
            else:
                consumer.acknowledge(record, AcknowledgeType.ACCEPT)
                accepted += 1
        consumer.commit_sync()
    return accepted, rejected


def test_prometheus_sees_cluster_and_share_group(cluster: Cluster, prometheus: PrometheusApi) -> None:
    topic, group = f"prom-{uuid.uuid4().hex[:8]}", f"prom-g-{uuid.uuid4().hex[:8]}"
    with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
        admin.create_topics([NewTopic(topic, PARTITIONS, 3)])[topic].result()
        admin.alter_group_configs(group, set={"share.auto.offset.reset": "earliest"})

    # Every node is scraped, and exactly one is the active controller.
    _wait_value(prometheus, 'count(up{job="shoal"} == 1)', 3)
    _wait_value(prometheus, "sum(shoal_controller_active)", 1)
    _wait_value(prometheus, "shoal:controller_active:sum", 1)
    assert prometheus.scalar("max(shoal_raft_term)") >= 1
    assert prometheus.scalar("min(shoal_raft_commit_index)") >= 1
    assert prometheus.scalar('sum(shoal_brokers{state="alive"})') == 3

    _produce(cluster, topic, 60, start=0)
    consumer = ShareConsumer(
        {"bootstrap.servers": cluster.bootstrap, "group.id": group, "share.acknowledgement.mode": "explicit"}
    )
    try:
        consumer.subscribe([topic])
        accepted, rejected = _drain(consumer, 60, reject_every=4)
        assert (accepted, rejected) == (45, 15)

        # The counters add up, across nodes, to what this test acknowledged.
        # (Other tests of this module's cluster do not use share groups.)
        _wait_value(prometheus, 'sum(shoal_share_acknowledged_records_total{type="accept"})', accepted)
        _wait_value(prometheus, 'sum(shoal_share_acknowledged_records_total{type="reject"})', rejected)
        _wait_value(prometheus, 'sum(shoal_share_acknowledged_records_total{type="release"})', 0)
        assert prometheus.scalar("sum(shoal_share_acquired_records_total)") >= 60
        lag = f'shoal_share_partition_lag_records{{group="{group}",topic="{topic}"}}'
        _wait_value(prometheus, f"count({lag})", PARTITIONS)
        _wait_value(prometheus, f"sum({lag})", 0)

        # New records raise the lag of the loaded share partitions; a drain
        # brings it back to 0.
        _produce(cluster, topic, 21, start=60)
        _wait_value(prometheus, f"sum({lag})", 21)
        more_accepted, more_rejected = _drain(consumer, 21, reject_every=4)
        assert (more_accepted, more_rejected) == (15, 6)  # 60, 64, ..., 80 rejected
    finally:
        consumer.close()
    _wait_value(prometheus, f"sum({lag})", 0)
    _wait_value(prometheus, 'sum(shoal_share_acknowledged_records_total{type="accept"})', accepted + more_accepted)
    _wait_value(prometheus, 'sum(shoal_share_acknowledged_records_total{type="reject"})', rejected + more_rejected)

    # Per-partition replication series exist for the topic, with sensible values.
    _wait_value(prometheus, f'count(shoal_partition_high_watermark{{topic="{topic}"}})', PARTITIONS)
    _wait_value(prometheus, f'sum(shoal_partition_high_watermark{{topic="{topic}"}})', 81)
    _wait_value(prometheus, f'count(shoal_log_size_bytes{{topic="{topic}"}} > 0)', PARTITIONS * 3)
    _wait_value(prometheus, "sum(shoal_under_replicated_partitions)", 0)
    # Each follower reports its own lag: two followers per partition at RF 3, caught up.
    follower_lag = f'shoal_follower_lag_records{{topic="{topic}"}}'
    _wait_value(prometheus, f"count({follower_lag})", PARTITIONS * 2)
    _wait_value(prometheus, f"sum({follower_lag})", 0)
    assert prometheus.scalar('sum(shoal_rpc_duration_seconds_count{rpc="ShareFetch"})') >= 1

    # The rules are loaded and healthy; no controller alert on a healthy cluster.
    rules = prometheus.get("/api/v1/rules")["groups"]
    names = {rule["name"] for group_rules in rules for rule in group_rules["rules"]}
    assert {"ShoalNoActiveController", "ShoalOfflinePartitions", "shoal:share_group_lag_records:sum"} <= names
    assert all(rule.get("health") in ("ok", "unknown") for g in rules for rule in g["rules"]), rules
    alerts = prometheus.get("/api/v1/alerts")["alerts"]
    assert not [a for a in alerts if a["labels"]["alertname"] == "ShoalNoActiveController"], alerts
