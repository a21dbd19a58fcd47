"""Share groups survive SIGKILL of every node role (3 nodes, replication factor 3).

Each test runs one scenario on a fresh cluster: a producer writes with
acks=all to two partitions while three share members fetch from the partition
leaders, heartbeat to the group coordinator and acknowledge with a mix of
ACCEPT, RELEASE, REJECT and silence (the lock expires). A nemesis SIGKILLs one
role mid-consumption, waits until deliveries resume elsewhere, and restarts
it: the leader of a consumed topic partition, the leader of the group's
``__share_group_state`` partition, the group coordinator, or all three nodes
at once. Then the producer stops, the members drain, and the whole history
(tests/chaos/history.py format) goes through tests/chaos/checker.py:

* I1  every produce acknowledged with acks=all ends accepted or archived;
* I5  nothing whose ACCEPT (or REJECT) returned success is delivered again;
* I7  per record, delivery counts strictly increase and never exceed the limit;
* I8  the durable start offset, sampled all along, never moves backwards, and
  no record below a sampled start offset is delivered;
* poison records (always released) end archived, delivered at the limit
  unless a fetch that may have carried that last delivery was lost.

The group id is chosen per scenario so that the killed role sits on a node of
its own where the placement allows it (for example, the share-state
coordinator is not also the partition leader), so that each test exercises
one move. On failure the history path and the checker's findings are printed;
run with ``--basetemp`` to keep them (and the node logs) after pytest rotates
its tmp dirs.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
import pytest

from node.interfaces import coordinator_partition, share_state_key
from proto import batch as batch_codec
from proto import shoal_pb2
from tests.chaos.checker import check
from tests.chaos.history import HistoryRecorder, load_history
from tests.harness import Cluster, read_all, start_cluster, wait_until

pytest.importorskip("node.server")
pytestmark = [pytest.mark.multiprocess, pytest.mark.xdist_group("cluster")]

LIMIT = 3
LOCK_MS = 1000
PARTITIONS = 2
TOPIC = "t-fail"
#: Records per produce request; the producer offers one request per partition every PRODUCE_PACE_S.
BATCH = 5
PRODUCE_PACE_S = 0.02
#: Deliveries before the fault, after it, and after the recovery.
DELIVERIES_BEFORE_FAULT = 300
DELIVERIES_PER_PHASE = 150
#: Partition 0 records whose sequence number is 7 modulo this are poison: always released.
POISON_EVERY = 20
INTERNAL_PARTITIONS = 8
SETTINGS = {
    "group.share.min.record.lock.duration.ms": "500",
    "group.share.record.lock.duration.ms": str(LOCK_MS),
    "share.coordinator.state.topic.num.partitions": str(INTERNAL_PARTITIONS),
    "offsets.topic.num.partitions": str(INTERNAL_PARTITIONS),
    # Leadership returns to a restarted node within a second or two (Kafka's
    # preferred-leader rebalance): a second move, this time away from a live
    # node, while the members are still consuming.
    "leader.imbalance.check.interval.seconds": "1",
}
ACK_NAMES = {1: "ACCEPT", 2: "RELEASE", 3: "REJECT"}
#: Group-coordinator errors after which a member looks the coordinator up again.
COORDINATOR_MOVED = {shoal_pb2.NOT_COORDINATOR, shoal_pb2.COORDINATOR_LOAD_IN_PROGRESS,
                     shoal_pb2.COORDINATOR_NOT_AVAILABLE}


def code_name(code: int) -> str:
    try:
        return shoal_pb2.ErrorCode.Name(code)
    except ValueError:
        return str(code)


def sequence_of(value: str) -> int:
    return int(value.rsplit("-", 1)[1])


def is_poison(partition: int, value: str) -> bool:
    return partition == 0 and sequence_of(value) % POISON_EVERY == 7


def decide(partition: int, value: str, delivery_count: int) -> int | None:
    """The acknowledgement a member gives a delivery (None: stay silent, let the lock expire)."""
    sequence = sequence_of(value)
    if is_poison(partition, value):
        return 2  # RELEASE, every time: archived at the delivery limit
    if sequence % 9 == 4:
        return 3  # REJECT: archived at once
    if sequence % 6 == 1 and delivery_count == 1:
        return 2  # RELEASE once, accept the redelivery
    if sequence % 11 == 5 and delivery_count == 1:
        return None  # silent once: redelivered after the lock expires
    return 1  # ACCEPT


def leaders(cluster: Cluster) -> dict[tuple[str, int], int]:
    """(topic, partition) → leader for the data topic and both internal topics, from any node."""
    response = cluster.any_call(
        lambda stub: stub.Metadata(shoal_pb2.MetadataRequest(include_internal=True), timeout=3)
    )
    return {(t.name, p.partition): p.leader for t in response.topics for p in t.partitions}


@dataclass
class Progress:
    """Counters shared by the workload threads (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    deliveries: int = 0
    acked_produces: int = 0
    errors: list[str] = field(default_factory=list)

    def add_deliveries(self, count: int) -> None:
        with self.lock:
            self.deliveries += count


class Workload:
    """Producer, members and start-offset sampler threads writing one history."""

    def __init__(self, cluster: Cluster, history: HistoryRecorder, group: str) -> None:
        self.cluster, self.history, self.group = cluster, history, group
        self.progress = Progress()
        self.stop = threading.Event()
        self.stop_producing = threading.Event()
        self.threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- plumbing

    def _leader(self, partition: int) -> int | None:
        for node_id in self.cluster.running():
            try:
                response = self.cluster.broker(node_id).Metadata(
                    shoal_pb2.MetadataRequest(topics=[TOPIC]), timeout=2)
            except grpc.RpcError:
                continue
            for topic in response.topics:
                for entry in topic.partitions:
                    if entry.partition == partition and entry.leader in self.cluster.running():
                        return entry.leader
        return None

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def run() -> None:
            try:
                target()
            except BaseException as error:  # noqa: BLE001 - surfaced by the test through progress.errors
                with self.progress.lock:
                    self.progress.errors.append(f"{name}: {error!r}")
                raise

        thread = threading.Thread(target=run, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def start(self, members: int = 3) -> None:
        self._spawn("producer", self._produce)
        for index in range(members):
            self._spawn(f"member-{index}", ShareMember(self, f"m{index}").run)
        self._spawn("sampler", self._sample)

    def close(self) -> None:
        self.stop_producing.set()
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    # ---------------------------------------------------------------- producer

    def _produce(self) -> None:
        """Batches of BATCH new values per partition, in turn, at a steady pace, until stopped.

        A failed batch is not retried with the same values (its outcome may be
        unknown); the next batch carries new ones, so every value is produced once.
        The pace is the offered load, so that production spans the whole fault.
        """
        sequences = [0] * PARTITIONS
        while not self.stop_producing.wait(PRODUCE_PACE_S):
            for partition in range(PARTITIONS):
                values = [f"P{partition}-{sequences[partition] + i}" for i in range(BATCH)]
                sequences[partition] += BATCH
                if not self._produce_batch(partition, values):
                    self.stop_producing.wait(0.1)  # a client's back-off after a failed produce

    def _produce_batch(self, partition: int, values: list[str]) -> bool:
        """Produce one batch with acks=all; True when it was acknowledged."""
        now_ms = int(time.time() * 1000)
        records = batch_codec.build_batch([(None, v.encode(), (), now_ms) for v in values])
        handles = [self.history.invoke(f"producer-{partition}-{i}", "produce", {"partition": partition, "value": v})
                   for i, v in enumerate(values)]
        leader = self._leader(partition)
        if leader is None:
            for handle in handles:
                handle.fail("LEADER_NOT_AVAILABLE")  # nothing was sent
            return False
        try:
            response = self.cluster.broker(leader).Produce(shoal_pb2.ProduceRequest(
                acks=-1, timeout_ms=5000, partitions=[
                    shoal_pb2.PartitionRecords(topic=TOPIC, partition=partition, records=records)]), timeout=8)
        except grpc.RpcError as error:
            for handle in handles:
                handle.info(f"rpc {error.code().name}", node=leader)
            return False
        result = response.results[0]
        if result.error_code:
            # Some errors come after the append (a timeout waiting for the followers):
            # recorded as unknown, which the checker treats as "may have happened".
            for handle in handles:
                handle.info(code_name(result.error_code), node=leader)
            return False
        for offset, (value, handle) in enumerate(zip(values, handles), start=result.base_offset):
            handle.ok({"partition": partition, "offset": offset, "value": value}, node=leader)
        with self.progress.lock:
            self.progress.acked_produces += len(values)
        return True

    # ---------------------------------------------------------------- sampler

    def _coordinator_call(self, method: str, request) -> object | None:
        for node_id in self.cluster.running():
            try:
                response = getattr(self.cluster.broker(node_id), method)(request, timeout=3)
            except grpc.RpcError:
                continue
            if response.error_code in COORDINATOR_MOVED:
                continue
            return response
        return None

    def durable_start_offsets(self) -> dict[int, int]:
        """partition → start offset at the share coordinator (the durable one)."""
        response = self._coordinator_call("DescribeShareGroupOffsets", shoal_pb2.DescribeShareGroupOffsetsRequest(
            group_id=self.group,
            partitions=[shoal_pb2.TopicPartition(topic=TOPIC, partition=p) for p in range(PARTITIONS)]))
        if response is None or response.error_code:
            return {}
        return {o.partition: o.start_offset for o in response.offsets if o.error_code == 0 and o.start_offset >= 0}

    def _sample(self) -> None:
        while not self.stop.wait(0.2):
            for partition, start_offset in sorted(self.durable_start_offsets().items()):
                self.history.event("sample", {"node": "share-coordinator", "partition": partition,
                                              "start_offset": start_offset})


class ShareMember:
    """One share-group member: heartbeats, one share session per partition leader, raw gRPC."""

    def __init__(self, workload: Workload, name: str) -> None:
        self.workload, self.name = workload, name
        self.cluster, self.history, self.group = workload.cluster, workload.history, workload.group
        self.member_id = uuid.uuid4().hex
        self.member_epoch = 0
        self.coordinator: int | None = None
        self.next_heartbeat = 0.0
        #: node → share session epoch on that node (absent: no session).
        self.sessions: dict[int, int] = {}
        #: node → [(partition, offset, value, delivery_count)] delivered by that node, not yet acknowledged.
        self.held: dict[int, list[tuple[int, int, str, int]]] = {}

    def run(self) -> None:
        self.history.event("join", {"member": self.name}, process=self.name)
        while not self.workload.stop.is_set():
            self._maybe_heartbeat()
            by_node: dict[int, list[int]] = {}
            for partition in range(PARTITIONS):
                leader = self.workload._leader(partition)
                if leader is not None:
                    by_node.setdefault(leader, []).append(partition)
            if not by_node:
                time.sleep(0.05)  # back-off while no leader is known
                continue
            for node_id in list(self.held):
                if node_id not in by_node:
                    # Leadership moved away: the session there is gone with its acquisitions,
                    # which the new leader will hand out again. Nothing is acknowledged.
                    self.held.pop(node_id)
                    self.sessions.pop(node_id, None)
            for node_id, partitions in sorted(by_node.items()):
                self._fetch(node_id, partitions)

    # ---------------------------------------------------------------- group coordinator

    def _maybe_heartbeat(self) -> None:
        if time.monotonic() < self.next_heartbeat:
            return
        self.next_heartbeat = time.monotonic() + 1.0
        if self.coordinator is None or self.coordinator not in self.cluster.running():
            self.coordinator = self._find_coordinator()
            if self.coordinator is None:
                return
        request = shoal_pb2.ShareGroupHeartbeatRequest(
            group_id=self.group, member_id=self.member_id, member_epoch=self.member_epoch,
            subscribed_topics=shoal_pb2.SubscribedTopics(names=[TOPIC]), client_id=self.name)
        try:
            response = self.cluster.broker(self.coordinator).ShareGroupHeartbeat(request, timeout=3)
        except grpc.RpcError:
            self.coordinator = None
            return
        if response.error_code in COORDINATOR_MOVED:
            self.coordinator = None
        elif response.error_code in (shoal_pb2.UNKNOWN_MEMBER_ID, shoal_pb2.FENCED_MEMBER_EPOCH):
            self.member_epoch = 0  # a new coordinator does not know the member: join again
            self.next_heartbeat = 0.0
        elif response.error_code == 0:
            self.member_epoch = response.member_epoch

    def _find_coordinator(self) -> int | None:
        for node_id in self.cluster.running():
            try:
                response = self.cluster.broker(node_id).FindCoordinator(
                    shoal_pb2.FindCoordinatorRequest(key_type=0, keys=[self.group]), timeout=2)
            except grpc.RpcError:
                continue
            entry = response.coordinators[0]
            if entry.error_code == 0 and entry.node_id in self.cluster.running():
                return entry.node_id
        return None

    # ---------------------------------------------------------------- share fetch

    def _fetch(self, node_id: int, partitions: list[int]) -> None:
        epoch = self.sessions.get(node_id, 0)
        acks: list[tuple[int, int, int]] = []
        if epoch != 0:
            for partition, offset, value, count in self.held.get(node_id, []):
                if partition in partitions:
                    kind = decide(partition, value, count)
                    if kind is not None:
                        acks.append((partition, offset, kind))
        self.held[node_id] = []
        request = shoal_pb2.ShareFetchRequest(
            group_id=self.group, member_id=self.member_id, share_session_epoch=epoch, max_wait_ms=100,
            max_records=10, max_bytes=1 << 20)
        for partition in partitions:
            part = request.partitions.add(topic=TOPIC, partition=partition)
            for ack_partition, offset, kind in acks:
                if ack_partition == partition:
                    part.acknowledgement_batches.add(first_offset=offset, last_offset=offset, acknowledge_types=[kind])
        ack_handle = None
        if acks:
            ack_handle = self.history.invoke(f"{self.name}/ack", "ack", {
                "member": self.name, "acks": [[p, o, ACK_NAMES[k]] for p, o, k in acks]})
        fetch_handle = self.history.invoke(f"{self.name}/fetch", "share_fetch", {"member": self.name})
        try:
            response = self.cluster.broker(node_id).ShareFetch(request, timeout=10)
        except grpc.RpcError as error:
            # Unknown outcome: the node may have applied the acknowledgements and
            # acquired records before the reply was lost (or refused the session).
            reason = f"rpc {error.code().name}: {error.details()}"
            if ack_handle is not None:
                ack_handle.info(reason, node=node_id)
            fetch_handle.info(reason, node=node_id)
            self.sessions.pop(node_id, None)
            return
        self.sessions[node_id] = 1 if epoch == 0 else epoch + 1
        by_partition = {data.partition: data for data in response.partitions}
        if ack_handle is not None:
            results = []
            for partition, offset, _ in acks:
                code = by_partition[partition].acknowledge_error_code if partition in by_partition else 0
                results.append([partition, offset, "ok" if code == 0 else f"fail:{code_name(code)}"])
            ack_handle.ok({"results": results}, node=node_id)
        delivered = []
        for data in response.partitions:
            if not data.acquired_records:
                continue
            values = {record.offset: record.value.decode() for record in batch_codec.records_in(data.records)}
            for acquired in data.acquired_records:
                for offset in range(acquired.first_offset, acquired.last_offset + 1):
                    value = values[offset]
                    delivered.append({
                        "partition": data.partition, "offset": offset, "value": value,
                        "delivery_count": acquired.delivery_count, "member": self.name,
                        "lock_deadline_ms": None, "leader_epoch": data.leader_epoch,
                    })
                    self.held[node_id].append((data.partition, offset, value, acquired.delivery_count))
        fetch_handle.ok({"records": delivered}, node=node_id)
        self.workload.progress.add_deliveries(len(delivered))


# -------------------------------------------------------------------- scenario


def configure_group(cluster: Cluster, group: str) -> None:
    def configured() -> bool:
        for node_id in cluster.running():
            try:
                response = cluster.broker(node_id).AlterGroupConfigs(shoal_pb2.AlterGroupConfigsRequest(
                    group_id=group, set={"share.auto.offset.reset": "earliest",
                                         "share.delivery.count.limit": str(LIMIT)}), timeout=5)
            except grpc.RpcError:
                continue
            if response.result.error_code == 0:
                return True
        return False

    wait_until(configured, 30, f"the configs of group {group}")


def pick_group(cluster: Cluster, role: str) -> tuple[str, int]:
    """A group id whose ``role`` node leads nothing else the scenario uses, and that node.

    Roles: "partition" (the leader of partition 0), "share_state" (the leader of
    the ``__share_group_state`` partition of (group, topic, 0)), "group" (the
    group coordinator). Placement is the controller's; when no candidate keeps
    the role apart, the last candidate is used.
    """
    def placed() -> dict[tuple[str, int], int] | None:
        # The internal topics are created once enough brokers registered; wait for them.
        found = leaders(cluster)
        wanted = [(name, p) for name in ("__share_group_state", "__consumer_offsets")
                  for p in range(INTERNAL_PARTITIONS)] + [(TOPIC, p) for p in range(PARTITIONS)]
        return found if all(found.get(key, -1) >= 0 for key in wanted) else None

    led = wait_until(placed, 30, "leaders of every partition the scenario uses")
    data_leaders = {led[(TOPIC, p)] for p in range(PARTITIONS)}
    fallback: tuple[str, int] | None = None
    for index in range(300):
        group = f"g-{role}-{index}"
        state = led[("__share_group_state", coordinator_partition(share_state_key(group, TOPIC, 0),
                                                                   INTERNAL_PARTITIONS))]
        coordinator = led[("__consumer_offsets", coordinator_partition(group, INTERNAL_PARTITIONS))]
        if role == "partition":
            target, others = led[(TOPIC, 0)], {state, coordinator}
        elif role == "share_state":
            target, others = state, data_leaders | {coordinator}
        else:
            target, others = coordinator, data_leaders | {state}
        fallback = (group, target)
        if target >= 0 and target not in others:
            return group, target
    assert fallback is not None
    return fallback


@dataclass
class Scenario:
    cluster: Cluster
    history: HistoryRecorder
    workload: Workload
    history_path: Path


def drained(workload: Workload) -> bool:
    """Every partition's durable start offset reached its high watermark (all terminal)."""
    starts = workload.durable_start_offsets()
    for partition in range(PARTITIONS):
        leader = workload._leader(partition)
        if leader is None or partition not in starts:
            return False
        response = workload.cluster.broker(leader).ListOffsets(shoal_pb2.ListOffsetsRequest(partitions=[
            shoal_pb2.ListOffsetsPartition(topic=TOPIC, partition=partition, timestamp=-1)]), timeout=3)
        if response.results[0].error_code or starts[partition] < response.results[0].offset:
            return False
    return True


def final_dump(scenario: Scenario) -> None:
    """One ``final_dump`` event per partition leader: its log and its share state."""
    cluster, group = scenario.cluster, scenario.workload.group
    names = {0: "AVAILABLE", 1: "ACQUIRED", 2: "ACKNOWLEDGED", 4: "ARCHIVED"}
    dumps: dict[int, dict[int, dict]] = {}
    for partition in range(PARTITIONS):
        leader = cluster.leader_of(TOPIC, partition)
        stub = cluster.broker(leader)
        log = [[offset, value.decode()] for offset, value in read_all(stub, TOPIC, partition)]
        described = stub.DescribeSharePartitions(shoal_pb2.DescribeSharePartitionsRequest(
            group_id=group, partitions=[shoal_pb2.TopicPartition(topic=TOPIC, partition=partition)]), timeout=5)
        entry = {"log": log, "high_watermark": log[-1][0] + 1 if log else 0, "start_offset": None, "states": None}
        for state in described.partitions:
            entry["high_watermark"] = state.high_watermark
            entry["start_offset"] = state.start_offset
            entry["states"] = [[r.first_offset, r.last_offset, names[r.state], r.delivery_count] for r in state.runs]
        dumps.setdefault(leader, {})[partition] = entry
    for node_id, partitions in sorted(dumps.items()):
        scenario.history.event("final_dump", {"node": node_id, "partitions": partitions}, node=node_id)


def verify(scenario: Scenario) -> None:
    """The checker's verdict plus the poison-record rule (see the module docstring)."""
    ops = load_history(scenario.history_path)
    result = check(ops, delivery_limit=LIMIT, lock_duration_ms=LOCK_MS, coverage_gates={
        "faults": 1, "acked_produces": 200, "redeliveries": 50,
        "delivery_limit_archives": 1})
    failing = {name: found[:3] for name, found in result.anomalies.items() if found}
    assert result.valid is True, (
        f"checker verdict {result.valid}: {json.dumps(failing, indent=1)} notes={result.notes} "
        f"coverage={result.coverage}")

    # Poison records: strictly increasing counts up to the limit were checked above;
    # here, each one ends archived (below the start offset, never accepted), and was
    # delivered at the limit unless a share fetch that may have carried it was lost.
    deliveries: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (delivery count, completion time)
    poison: dict[tuple[int, int], str] = {}
    lost_fetches_ns: list[int] = []  # completion times of share fetches with an unknown outcome
    for op in ops:
        if op.f == "share_fetch" and op.type == "info" and op.process != "nemesis":
            lost_fetches_ns.append(op.time_ns)
        if op.f == "share_fetch" and op.type == "ok":
            for record in op.value["records"]:
                key = (record["partition"], record["offset"])
                deliveries.setdefault(key, []).append((record["delivery_count"], op.time_ns))
                if is_poison(record["partition"], record["value"]):
                    poison[key] = record["value"]
    assert poison, "no poison record was delivered"
    starts = wait_until(lambda: scenario.workload.durable_start_offsets() or None, 30, "the final start offsets")
    for (partition, offset), value in sorted(poison.items()):
        assert offset < starts[partition], f"poison {value} at {offset} is not terminal (start {starts[partition]})"
        highest, seen_ns = max(deliveries[(partition, offset)])
        # A lost reply after the last delivery seen may have carried the delivery at the limit.
        if highest < LIMIT:
            assert any(lost_ns > seen_ns for lost_ns in lost_fetches_ns), (
                f"poison {value} archived after deliveries {deliveries[(partition, offset)]}, below the limit {LIMIT}")
    at_limit = sum(1 for key in poison if max(deliveries[key])[0] == LIMIT)
    assert at_limit >= 1, f"no poison record was delivered at the limit: {sorted(poison.values())}"


def run_scenario(tmp_path: Path, role: str, nemesis: Callable[[Scenario, int], None]) -> None:
    history_path = tmp_path / "history.jsonl"
    cluster = start_cluster(3, tmp_path / "cluster", SETTINGS)
    history = HistoryRecorder(history_path)
    workload: Workload | None = None
    try:
        cluster.create_topic(TOPIC, PARTITIONS, 3)
        group, target = pick_group(cluster, role)
        configure_group(cluster, group)
        workload = Workload(cluster, history, group)
        scenario = Scenario(cluster, history, workload, history_path)
        workload.start()
        wait_until(lambda: workload.progress.deliveries >= DELIVERIES_BEFORE_FAULT, 60, "deliveries before the fault")
        nemesis(scenario, target)
        after_recovery = workload.progress.deliveries + DELIVERIES_PER_PHASE
        wait_until(lambda: workload.progress.deliveries >= after_recovery, 60, "deliveries after the recovery")
        workload.stop_producing.set()
        wait_until(lambda: drained(workload), 90, "the drain (every start offset at the high watermark)",
                   interval_s=0.2)
        workload.close()
        assert not workload.progress.errors, workload.progress.errors
        final_dump(scenario)
        verify(scenario)
    except BaseException:
        print(f"share failover history: {history_path} (node logs in {cluster.base_dir})")
        raise
    finally:
        if workload is not None:
            workload.close()
        history.close()
        cluster.close()


def kill_and_restart(scenario: Scenario, node_id: int) -> None:
    """SIGKILL one node mid-consumption, let the others serve, restart it."""
    workload = scenario.workload
    scenario.history.event("kill", {"targets": [node_id]})
    scenario.cluster.kill(node_id)
    before = workload.progress.deliveries
    wait_until(lambda: workload.progress.deliveries >= before + DELIVERIES_PER_PHASE, 60, "deliveries after the kill")
    scenario.cluster.restart(node_id)
    scenario.history.event("restart", {"targets": [node_id]})


def test_kill_partition_leader(tmp_path):
    run_scenario(tmp_path, "partition", kill_and_restart)


def test_kill_share_state_coordinator(tmp_path):
    run_scenario(tmp_path, "share_state", kill_and_restart)


def test_kill_group_coordinator(tmp_path):
    run_scenario(tmp_path, "group", kill_and_restart)


def test_kill_all_nodes(tmp_path):
    def kill_all(scenario: Scenario, _target: int) -> None:
        cluster = scenario.cluster
        scenario.history.event("kill_all", {"targets": cluster.node_ids})
        for node_id in cluster.node_ids:
            cluster.kill(node_id)
        for node_id in cluster.node_ids:
            cluster.restart(node_id, wait=False)
        cluster.wait_ready(60)
        scenario.history.event("restart", {"targets": cluster.node_ids})

    run_scenario(tmp_path, "partition", kill_all)
