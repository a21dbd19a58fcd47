"""Node metrics: a pull collector over the node's own counters, RPC metrics, /metrics.

Rules
* Hot paths pay (almost) nothing. Node objects keep plain ``int`` attributes
  and dicts (``self.isr_shrinks_total += 1``); at scrape time a custom
  collector reads them and yields metric families
  (dependencies-notes.md §6: a prometheus ``labels().inc()`` costs ~1 µs, an
  attribute increment ~30 ns). The only calls on request paths are
  :meth:`LatencyRecorder.observe` (a bisect and two adds, ~0.3 µs, once per
  request, never per record) and the gRPC interceptor's per-call bookkeeping.
* Names follow STYLE.md §3: ``shoal_`` prefix, base units (seconds, bytes,
  records), ``_total`` on counters. Labels are only ``group``, ``topic``,
  ``partition``, ``type``, ``state``, ``rpc`` and ``code`` (never member ids
  or offsets), so every family sums sensibly across label values and nodes.
* Per-partition series are gauges and counters only; histograms are per node
  (share-partition load, share-state write) or per RPC method: a scrape of
  thousands of labelled histogram series holds the GIL for ~120 ms and stalls
  the Raft tick thread.
* Cluster-wide values (brokers alive/fenced, offline partitions, leader
  elections) are reported by the active controller only and are 0 elsewhere,
  as Kafka's controller metrics are, so ``sum()`` over nodes is the cluster
  value. Per-node values (under-replicated partitions of the partitions this
  node leads, ISR changes it requested) also sum to the cluster value.
* A scrape never fails because one source fails: the failing source is
  logged and its families are left out of that scrape.

Metric sources (the seam with the node objects)
``NodeCollector`` reads only *sources*: zero-argument callables, each
returning one snapshot dataclass defined below (``ReplicationSnapshot``,
``QuorumSnapshot``, ``ControllerSnapshot``, ``GroupsSnapshot``,
``ShareSnapshot``, ``ShareCoordinatorSnapshot``). The adapter functions
(``replication_source``, ``quorum_source``, ``controller_source``, ...) build
them from the real objects and are the only code that knows attribute names,
so a renamed attribute breaks one adapter and its unit test, not the metric
names. A node wires them in one place::

    metrics = NodeMetrics(node_id)
    metrics.sources.replication = replication_source(replica_manager)
    metrics.sources.quorum = quorum_source(quorum)
    metrics.sources.controller = controller_source(controller_service, lambda: quorum.state.image)
    metrics.sources.groups = groups_source(group_coordinator)
    metrics.sources.share = share_source(share_manager)
    metrics.sources.share_coordinator = share_coordinator_source(share_coordinator)
    server = grpc.aio.server(interceptors=[metrics.interceptor], ...)
    metrics.start_server(config.metrics_port, host)

Threading: sources run on prometheus-client's HTTP thread while the event
loop mutates the objects. Reading ints is safe under the GIL; dicts are copied
with ``list(d.items())`` (one C call, atomic with respect to other Python
threads) and a copy that races a resize (``RuntimeError``) is retried.
"""

from __future__ import annotations

import bisect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import grpc
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

log = logging.getLogger("node.metrics")

T = TypeVar("T")

#: Request latencies: long polls wait up to fetch.max.wait (500 ms default),
#: acks=all produce and share-state writes take a replication round trip.
RPC_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
#: Share-partition loads read the state from the share coordinator (one RPC
#: and maybe a log replay on the coordinator).
LOAD_BUCKETS_S: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Share-state writes wait for acks=all on the state partition.
WRITE_BUCKETS_S: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

ACKNOWLEDGE_TYPES: tuple[str, ...] = ("accept", "release", "reject", "renew")


# ---------------------------------------------------------------------- latency


class LatencyRecorder:
    """A fixed-bucket histogram without dependencies, cheap enough for request paths.

    ``observe`` adds to one bucket (non-cumulative) and to the sum; the count
    is the sum of the buckets, so a scrape that races an observation never
    shows a count that disagrees with the ``+Inf`` bucket. Used from the event
    loop thread only; the collector reads it from the scrape thread.
    """

    __slots__ = ("bounds", "_bucket_counts", "sum")

    def __init__(self, bounds: Sequence[float] = RPC_BUCKETS_S) -> None:
        assert list(bounds) == sorted(bounds) and len(set(bounds)) == len(bounds), "bounds must increase"
        self.bounds: tuple[float, ...] = tuple(bounds)
        # One slot per bound plus the overflow (+Inf) slot.
        self._bucket_counts: list[int] = [0] * (len(self.bounds) + 1)
        self.sum: float = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le).
        self._bucket_counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def observe_ms(self, milliseconds: float) -> None:
        self.observe(milliseconds / 1000.0)

    @property
    def count(self) -> int:
        return sum(self._bucket_counts)

    def cumulative_buckets(self) -> list[tuple[str, int]]:
        """[(le, cumulative count)] ending with ('+Inf', count), as the exposition wants."""
        counts = list(self._bucket_counts)
        result: list[tuple[str, int]] = []
        running = 0
        for bound, bucket in zip(self.bounds, counts):
            running += bucket
            result.append((_float_label(bound), running))
        running += counts[-1]
        result.append(("+Inf", running))
        return result

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        buckets = self.cumulative_buckets()
        return buckets, self.sum


def _float_label(value: float) -> str:
    # prometheus_client formats le as repr of a float ("0.5", "1.0", "10.0").
    return repr(float(value))


# ---------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class PartitionReplicaSample:
    """One partition replica on this node."""

    topic: str
    partition: int
    is_leader: bool
    log_size_bytes: int
    log_start_offset: int
    log_end_offset: int
    high_watermark: int
    replicas: int  # assigned replica count
    isr: int  # in-sync replica count (as the applied metadata says)
    #: Leader only: records the slowest assigned follower is behind the
    #: leader's log end offset (-1 where unknown, e.g. a follower).
    max_follower_lag_records: int = -1
    #: Follower only: records this replica is behind the leader's high
    #: watermark as of its last fetch (Kafka's replica-fetcher ConsumerLag);
    #: -1 on a leader or before the first fetch.
    follower_lag_records: int = -1


@dataclass(frozen=True)
class ReplicationSnapshot:
    partitions: Sequence[PartitionReplicaSample]
    isr_shrinks_total: int = 0
    isr_expands_total: int = 0
    produced_bytes_total: int = 0
    fetched_bytes_total: int = 0


@dataclass(frozen=True)
class QuorumSnapshot:
    term: int
    commit_index: int
    is_leader: bool
    has_quorum: bool


@dataclass(frozen=True)
class ControllerSnapshot:
    """Cluster-wide values; only the active controller reports them (others: active=False)."""

    active: bool
    brokers_alive: int = 0
    brokers_fenced: int = 0
    offline_partitions: int = 0
    leader_elections_total: int = 0
    fenced_brokers_total: int = 0


@dataclass(frozen=True)
class GroupsSnapshot:
    """Groups of the ``__consumer_offsets`` partitions this node coordinates."""

    groups: Mapping[tuple[str, str], int]  # (type, state) -> groups
    members: Mapping[str, int]  # type -> members
    rebalances_total: Mapping[str, int]  # type -> group-epoch bumps


@dataclass(frozen=True)
class SharePartitionSample:
    """One share partition this node leads (one per share group and topic partition)."""

    group: str
    topic: str
    partition: int
    start_offset: int
    end_offset: int
    lag_records: int
    in_flight_records: int
    in_flight_runs: int
    acquired_records_total: int = 0
    #: Keys: accept, release, reject, renew (GAP is ignored, as Kafka does).
    acknowledged_records_total: Mapping[str, int] = field(default_factory=dict)
    lock_expired_records_total: int = 0
    delivery_limit_archived_records_total: int = 0


@dataclass(frozen=True)
class ShareSnapshot:
    """The share-partition leaders on this node (node/share_manager.py).

    ``node_record_counts`` is for a share manager that counts records per node
    only: then the record counters are exposed without the group, topic and
    partition labels (``sum by (type)`` queries and the alert rules work with
    either form). Keys as in ``SharePartitionSample`` plus ``acquired``,
    ``lock_expired``, ``archived_delivery_limit``.
    """

    partitions: Sequence[SharePartitionSample]
    fetch_requests_total: int = 0
    fetch_requests_failed_total: int = 0
    acknowledge_requests_total: int = 0
    acknowledge_requests_failed_total: int = 0
    partition_load: LatencyRecorder | None = None
    loads_total: int = 0
    last_load_seconds: float | None = None
    node_record_counts: Mapping[str, int] | None = None


@dataclass(frozen=True)
class ShareCoordinatorSnapshot:
    """Share-state writes on this node's share coordinators.

    ``write_latency`` (a histogram) when the coordinator records each write;
    otherwise ``write_seconds_sum``/``write_seconds_count`` are exposed as a
    summary (average only), e.g. from the share-partition leaders' timing of
    their write round trips.
    """

    writes_total: int = 0
    writes_failed_total: int = 0
    write_latency: LatencyRecorder | None = None
    write_seconds_sum: float | None = None
    write_seconds_count: int = 0


@dataclass
class MetricSources:
    """Zero-argument callables read at scrape time; None: not on this node (yet)."""

    replication: Callable[[], ReplicationSnapshot] | None = None
    quorum: Callable[[], QuorumSnapshot] | None = None
    controller: Callable[[], ControllerSnapshot] | None = None
    groups: Callable[[], GroupsSnapshot] | None = None
    share: Callable[[], ShareSnapshot] | None = None
    share_coordinator: Callable[[], ShareCoordinatorSnapshot] | None = None


# ---------------------------------------------------------------------- adapters


def stable_copy(read: Callable[[], T], attempts: int = 20) -> T:
    """Run ``read`` (which copies loop-owned dicts) until no concurrent resize breaks it."""
    for _ in range(attempts - 1):
        try:
            return read()
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return read()


def replication_source(replica_manager: Any) -> Callable[[], ReplicationSnapshot]:
    """Adapter for ``node.replica_manager.ReplicaManager``.

    Reads ``replicas`` ({(topic, partition): Replica} with ``role``,
    ``high_watermark``, ``log`` (``size_bytes``, ``log_start_offset``,
    ``log_end_offset``), ``registration`` (``replicas``, ``isr``),
    ``followers`` ({node id: FollowerState(log_end_offset)})) and the counters
    ``isr_shrinks_total``, ``isr_expands_total``, ``produced_bytes_total``,
    ``fetched_bytes_total``.
    """

    def sample(replica: Any) -> PartitionReplicaSample | None:
        partition_log = replica.log
        try:
            size = partition_log.size_bytes
            start = partition_log.log_start_offset
            end = partition_log.log_end_offset
        except Exception:  # a log closed by a concurrent delete: skip it this scrape
            return None
        is_leader = replica.role == "leader"
        registration = replica.registration
        lag = -1
        if is_leader:
            lag = 0
            followers = dict(replica.followers)
            for node_id in registration.replicas:
                if node_id == getattr(replica_manager, "node_id", None):
                    continue
                follower = followers.get(node_id)
                # Not heard from in this leader epoch: the HW is what the
                # leader can vouch for, so count the lag from there.
                follower_end = follower.log_end_offset if follower is not None else -1
                if follower_end < 0:
                    follower_end = min(replica.high_watermark, end)
                lag = max(lag, end - follower_end)
        follower_lag = -1
        if replica.role == "follower" and replica.leader_high_watermark >= 0:
            follower_lag = max(0, replica.leader_high_watermark - end)
        return PartitionReplicaSample(
            topic=replica.topic,
            partition=replica.partition,
            is_leader=is_leader,
            log_size_bytes=size,
            log_start_offset=start,
            log_end_offset=end,
            high_watermark=replica.high_watermark,
            replicas=len(registration.replicas),
            isr=len(registration.isr),
            max_follower_lag_records=lag,
            follower_lag_records=follower_lag,
        )

    def read() -> ReplicationSnapshot:
        replicas = stable_copy(lambda: list(replica_manager.replicas.values()))
        samples = [s for s in (stable_copy(lambda r=r: sample(r)) for r in replicas) if s is not None]
        return ReplicationSnapshot(
            partitions=samples,
            isr_shrinks_total=getattr(replica_manager, "isr_shrinks_total", 0),
            isr_expands_total=getattr(replica_manager, "isr_expands_total", 0),
            produced_bytes_total=getattr(replica_manager, "produced_bytes_total", 0),
            fetched_bytes_total=getattr(replica_manager, "fetched_bytes_total", 0),
        )

    return read


def quorum_source(quorum: Any) -> Callable[[], QuorumSnapshot]:
    """Adapter for ``cluster.raft.MetadataQuorum`` (its ``status()`` and ``is_leader()``)."""

    def read() -> QuorumSnapshot:
        status = quorum.status()
        return QuorumSnapshot(
            term=int(status.get("term") or 0),
            commit_index=int(status.get("commit_index") or 0),
            is_leader=bool(quorum.is_leader()),
            has_quorum=bool(status.get("has_quorum")),
        )

    return read


def controller_source(controller_service: Any, image: Callable[[], Any]) -> Callable[[], ControllerSnapshot]:
    """Adapter for ``node.controller_service.ControllerService`` and the applied metadata image.

    ``active`` is the controller loop's own flag (it acts only while the Raft
    leader), counters ``elections_proposed_total`` and ``fenced_brokers_total``;
    brokers and offline partitions come from ``image()``
    (``cluster.metadata.MetadataImage``).
    """

    def read() -> ControllerSnapshot:
        if not controller_service.active:
            return ControllerSnapshot(active=False)
        current = image()
        brokers = list(current.brokers_list())
        offline = sum(1 for partition in current.all_partitions() if partition.offline)
        return ControllerSnapshot(
            active=True,
            brokers_alive=sum(1 for broker in brokers if not broker.fenced),
            brokers_fenced=sum(1 for broker in brokers if broker.fenced),
            offline_partitions=offline,
            leader_elections_total=getattr(controller_service, "elections_proposed_total", 0),
            fenced_brokers_total=getattr(controller_service, "fenced_brokers_total", 0),
        )

    return read


def share_source(share_manager: Any, local: Any | None = None) -> Callable[[], ShareSnapshot]:
    """Adapter for ``node.share_manager.ShareManager``.

    Reads its holders (``_holders``: {ShareKey: holder} with ``key``
    (group_id, topic, partition) and ``partition``, a
    ``coordinator.share_partition.SharePartition`` or None while loading) and
    its counters. Lag is KIP-1226's, against the partition's high watermark
    from ``local`` (the replica manager). Per-partition record counters come
    from ``holder.counts`` ({"acquired", "accept", ..., "lock_expired",
    "archived_delivery_limit": n}) when the share manager keeps them; else the
    node-wide counters are exposed without partition labels. Load timing comes
    from its ``load_time`` LatencyRecorder when present, else from
    ``loads_total``/``last_load_time_ms``; write timing is the share
    coordinator's (``share_coordinator_source``).
    """

    def sample(holder: Any) -> SharePartitionSample | None:
        partition = holder.partition
        if partition is None or getattr(holder, "dropped", False):
            return None
        key = holder.key
        end_offset = partition.end_offset
        if local is not None:
            try:
                high_watermark = local.high_watermark(key.topic, key.partition)
            except Exception:  # leadership just moved; the holder is about to be dropped
                return None
        else:
            high_watermark = end_offset
        counts: Mapping[str, int] = dict(getattr(holder, "counts", None) or {})
        return SharePartitionSample(
            group=key.group_id,
            topic=key.topic,
            partition=key.partition,
            start_offset=partition.start_offset,
            end_offset=end_offset,
            lag_records=partition.lag(max(high_watermark, end_offset)),
            in_flight_records=partition.in_flight_record_count,
            in_flight_runs=len(partition.runs()),
            acquired_records_total=counts.get("acquired", 0),
            acknowledged_records_total={t: counts.get(t, 0) for t in ACKNOWLEDGE_TYPES} if counts else {},
            lock_expired_records_total=counts.get("lock_expired", 0),
            delivery_limit_archived_records_total=counts.get("archived_delivery_limit", 0),
        )

    def read() -> ShareSnapshot:
        holders = stable_copy(lambda: list(share_manager._holders.values()))
        samples = [s for s in (stable_copy(lambda h=h: sample(h)) for h in holders) if s is not None]
        per_partition = any(getattr(h, "counts", None) is not None for h in holders)
        node_counts: dict[str, int] | None = None
        if not per_partition:
            acknowledged = stable_copy(lambda: dict(share_manager.acknowledged_records_total))
            node_counts = {
                "acquired": share_manager.acquired_records_total,
                "lock_expired": share_manager.lock_expirations_total,
                "archived_delivery_limit": share_manager.delivery_limit_archives_total,
                **{t: acknowledged.get(t, 0) for t in ACKNOWLEDGE_TYPES},
            }
        last_load_ms = getattr(share_manager, "last_load_time_ms", None)
        load_time = getattr(share_manager, "load_time", None)
        return ShareSnapshot(
            partitions=samples,
            fetch_requests_total=share_manager.fetch_requests_total,
            fetch_requests_failed_total=share_manager.fetch_failures_total,
            acknowledge_requests_total=share_manager.acknowledge_requests_total,
            acknowledge_requests_failed_total=share_manager.acknowledge_failures_total,
            partition_load=load_time if isinstance(load_time, LatencyRecorder) else None,
            loads_total=getattr(share_manager, "loads_total", 0),
            last_load_seconds=None if not getattr(share_manager, "loads_total", 0) else (last_load_ms or 0) / 1000.0,
            node_record_counts=node_counts,
        )

    return read


def share_coordinator_source(share_coordinator: Any, share_manager: Any | None = None) -> Callable[[], ShareCoordinatorSnapshot]:
    """Adapter for ``node.share_coordinator.ShareCoordinator`` (``writes_total``,
    ``write_failures_total``, optional ``write_latency`` LatencyRecorder).

    Without a coordinator-side recorder, the share manager's write round trips
    (``state_writes_total``, ``state_write_latency_ms_sum``) give the average.
    """

    def read() -> ShareCoordinatorSnapshot:
        recorder = getattr(share_coordinator, "write_latency", None)
        summary_sum: float | None = None
        summary_count = 0
        if not isinstance(recorder, LatencyRecorder):
            recorder = None
            if share_manager is not None and hasattr(share_manager, "state_write_latency_ms_sum"):
                summary_sum = share_manager.state_write_latency_ms_sum / 1000.0
                summary_count = share_manager.state_writes_total - share_manager.state_write_failures_total
        return ShareCoordinatorSnapshot(
            writes_total=share_coordinator.writes_total,
            writes_failed_total=share_coordinator.write_failures_total,
            write_latency=recorder,
            write_seconds_sum=summary_sum,
            write_seconds_count=summary_count,
        )

    return read


def groups_source(group_coordinator: Any) -> Callable[[], GroupsSnapshot]:
    """Adapter for ``node.group_coordinator.GroupCoordinator``.

    Sums ``group_counts()`` ({(type, state): n}) and ``member_counts()``
    ({type: n}) over the loaded shards of its ``runtime``
    (``loaded_partitions()``, ``shard(p)``), or calls them on the object
    itself when it offers them. Rebalances come from ``rebalances_total``
    ({type: n}) where the coordinator keeps it.
    """

    def shards() -> list[Any]:
        if hasattr(group_coordinator, "group_counts"):
            return [group_coordinator]
        runtime = group_coordinator.runtime
        result = []
        for partition in runtime.loaded_partitions():
            try:
                result.append(runtime.shard(partition))
            except Exception:  # unloaded between the two calls
                continue
        return result

    def read() -> GroupsSnapshot:
        groups: dict[tuple[str, str], int] = {}
        members: dict[str, int] = {}
        for shard in stable_copy(shards):
            for (group_type, state), count in stable_copy(lambda: dict(shard.group_counts())).items():
                key = (str(group_type), str(state))
                groups[key] = groups.get(key, 0) + count
            for group_type, count in stable_copy(lambda: dict(shard.member_counts())).items():
                members[str(group_type)] = members.get(str(group_type), 0) + count
        rebalances = stable_copy(lambda: dict(getattr(group_coordinator, "rebalances_total", {}) or {}))
        return GroupsSnapshot(groups=groups, members=members, rebalances_total=rebalances)

    return read


def wire_node(metrics: "NodeMetrics", node: Any) -> None:
    """Point every source at the objects of a running ``node.broker.Node``.

    Safe to call again after group services appear; attributes a node does
    not have yet leave their source unwired.
    """
    if getattr(node, "replicas", None) is not None:
        metrics.sources.replication = replication_source(node.replicas)
    if getattr(node, "quorum", None) is not None:
        metrics.sources.quorum = quorum_source(node.quorum)
        if getattr(node, "controller", None) is not None:
            metrics.sources.controller = controller_source(node.controller, lambda: node.quorum.state.image)
    services = getattr(node, "group_services", None)
    if services is None:
        return
    share_manager = getattr(services, "share_manager", None)
    if share_manager is not None:
        metrics.sources.share = share_source(share_manager, getattr(node, "replicas", None))
    share_coordinator = getattr(services, "share_coordinator", None)
    if share_coordinator is not None:
        metrics.sources.share_coordinator = share_coordinator_source(share_coordinator, share_manager)
    group_coordinator = getattr(services, "group_coordinator", None)
    if group_coordinator is not None:
        metrics.sources.groups = groups_source(group_coordinator)


# ---------------------------------------------------------------------- collector


class NodeCollector(Collector):
    """Reads the node's sources at scrape time and yields every ``shoal_`` node family."""

    def __init__(self, node_id: int, sources: MetricSources, rpc: "RpcMetrics | None" = None) -> None:
        self.node_id = node_id
        self.sources = sources
        self.rpc = rpc

    def describe(self) -> list[Metric]:
        # Returning nothing keeps registration from calling collect() (which
        # would read sources that are not wired yet) and allows duplicate-free
        # registration of a dynamic collector.
        return []

    def collect(self) -> Iterator[Metric]:
        sections: list[tuple[str, Callable[[], Iterable[Metric]]]] = [
            ("replication", self._replication),
            ("quorum", self._quorum),
            ("controller", self._controller),
            ("groups", self._groups),
            ("share", self._share),
            ("share_coordinator", self._share_coordinator),
        ]
        for name, section in sections:
            try:
                families = list(section())
            except Exception:
                log.exception("metric source %s failed; its families are left out of this scrape", name)
                continue
            yield from families
        if self.rpc is not None:
            yield from self.rpc.families()

    # -- sections ---------------------------------------------------------------

    def _replication(self) -> Iterable[Metric]:
        if self.sources.replication is None:
            return []
        snap = self.sources.replication()
        tp = ["topic", "partition"]
        size = GaugeMetricFamily("shoal_log_size_bytes", "Bytes of the partition replica's log segments on this node.", labels=tp)
        start = GaugeMetricFamily("shoal_log_start_offset", "Log start offset of the partition replica on this node.", labels=tp)
        end = GaugeMetricFamily("shoal_log_end_offset", "Log end offset of the partition replica on this node.", labels=tp)
        hw = GaugeMetricFamily("shoal_partition_high_watermark", "High watermark of partitions this node leads.", labels=tp)
        lag = GaugeMetricFamily(
            "shoal_replication_lag_records",
            "Records the slowest follower is behind the leader's log end offset (reported by the leader).",
            labels=tp,
        )
        follower_lag = GaugeMetricFamily(
            "shoal_follower_lag_records",
            "Records this follower replica is behind the leader's high watermark as of its last fetch "
            "(reported by each follower, so the scrape's instance names the follower).",
            labels=tp,
        )
        leaders = 0
        under_replicated = 0
        for p in snap.partitions:
            labels = [p.topic, str(p.partition)]
            size.add_metric(labels, p.log_size_bytes)
            start.add_metric(labels, p.log_start_offset)
            end.add_metric(labels, p.log_end_offset)
            if p.follower_lag_records >= 0:
                follower_lag.add_metric(labels, p.follower_lag_records)
            if p.is_leader:
                leaders += 1
                hw.add_metric(labels, p.high_watermark)
                if p.max_follower_lag_records >= 0:
                    lag.add_metric(labels, p.max_follower_lag_records)
                # Kafka's UnderReplicatedPartitions: counted by the leader, so
                # the sum over nodes counts each partition once.
                if p.isr < p.replicas:
                    under_replicated += 1
        return [
            size,
            start,
            end,
            hw,
            lag,
            follower_lag,
            GaugeMetricFamily("shoal_leader_partitions", "Partitions this node leads.", value=leaders),
            GaugeMetricFamily("shoal_replica_partitions", "Partition replicas hosted on this node (leaders included).", value=len(snap.partitions)),
            GaugeMetricFamily(
                "shoal_under_replicated_partitions",
                "Partitions this node leads whose ISR is smaller than their replica set.",
                value=under_replicated,
            ),
            CounterMetricFamily("shoal_isr_shrinks", "ISR shrinks this node (as leader) has requested.", value=snap.isr_shrinks_total),
            CounterMetricFamily("shoal_isr_expands", "ISR expansions this node (as leader) has requested.", value=snap.isr_expands_total),
            CounterMetricFamily("shoal_produced_bytes", "Record-batch bytes appended as leader.", value=snap.produced_bytes_total),
            CounterMetricFamily("shoal_fetched_bytes", "Record-batch bytes returned to consumers.", value=snap.fetched_bytes_total),
        ]

    def _quorum(self) -> Iterable[Metric]:
        if self.sources.quorum is None:
            return []
        snap = self.sources.quorum()
        return [
            GaugeMetricFamily("shoal_raft_term", "Current Raft term of the metadata quorum as this node sees it.", value=snap.term),
            GaugeMetricFamily("shoal_raft_commit_index", "Raft commit index of the metadata quorum on this node.", value=snap.commit_index),
            GaugeMetricFamily("shoal_raft_leader", "1 if this node is the Raft leader of the metadata quorum.", value=int(snap.is_leader)),
            GaugeMetricFamily("shoal_raft_has_quorum", "1 if this node's Raft member sees a quorum.", value=int(snap.has_quorum)),
        ]

    def _controller(self) -> Iterable[Metric]:
        if self.sources.controller is None:
            return []
        snap = self.sources.controller()
        brokers = GaugeMetricFamily(
            "shoal_brokers",
            "Registered brokers by state (active controller only; 0 elsewhere).",
            labels=["state"],
        )
        brokers.add_metric(["alive"], snap.brokers_alive)
        brokers.add_metric(["fenced"], snap.brokers_fenced)
        return [
            GaugeMetricFamily("shoal_controller_active", "1 on the active controller, 0 elsewhere.", value=int(snap.active)),
            brokers,
            GaugeMetricFamily(
                "shoal_offline_partitions",
                "Partitions without a leader (active controller only; 0 elsewhere).",
                value=snap.offline_partitions,
            ),
            CounterMetricFamily(
                "shoal_partition_leader_elections",
                "Partition leader elections this node proposed as active controller.",
                value=snap.leader_elections_total,
            ),
            CounterMetricFamily(
                "shoal_broker_fencings",
                "Brokers this node fenced as active controller (missed heartbeats).",
                value=snap.fenced_brokers_total,
            ),
        ]

    def _groups(self) -> Iterable[Metric]:
        if self.sources.groups is None:
            return []
        snap = self.sources.groups()
        groups = GaugeMetricFamily("shoal_groups", "Groups coordinated by this node, by type and state.", labels=["type", "state"])
        for (group_type, state), count in sorted(snap.groups.items()):
            groups.add_metric([group_type, state], count)
        members = GaugeMetricFamily("shoal_group_members", "Members of groups coordinated by this node, by group type.", labels=["type"])
        for group_type, count in sorted(snap.members.items()):
            members.add_metric([group_type], count)
        rebalances = CounterMetricFamily(
            "shoal_group_rebalances",
            "Group epoch bumps (target assignment recomputed) on this node, by group type.",
            labels=["type"],
        )
        for group_type, count in sorted(snap.rebalances_total.items()):
            rebalances.add_metric([group_type], count)
        return [groups, members, rebalances]

    def _share(self) -> Iterable[Metric]:
        if self.sources.share is None:
            return []
        snap = self.sources.share()
        gtp = ["group", "topic", "partition"]
        acquired = CounterMetricFamily("shoal_share_acquired_records", "Records acquired (delivered) by share-partition leaders.", labels=gtp)
        acknowledged = CounterMetricFamily(
            "shoal_share_acknowledged_records",
            "Records acknowledged by share consumers, by acknowledge type.",
            labels=gtp + ["type"],
        )
        expired = CounterMetricFamily("shoal_share_lock_expired_records", "Records whose acquisition lock expired.", labels=gtp)
        archived = CounterMetricFamily(
            "shoal_share_delivery_limit_archived_records",
            "Records archived because they reached the delivery count limit.",
            labels=gtp,
        )
        in_flight = GaugeMetricFamily("shoal_share_in_flight_records", "Records in the share partition's in-flight window.", labels=gtp)
        runs = GaugeMetricFamily("shoal_share_in_flight_runs", "Runs (ranges of equal state) in the in-flight window.", labels=gtp)
        start = GaugeMetricFamily("shoal_share_partition_start_offset", "Share-partition start offset (SPSO).", labels=gtp)
        end = GaugeMetricFamily("shoal_share_partition_end_offset", "Share-partition end offset (SPEO).", labels=gtp)
        lag = GaugeMetricFamily("shoal_share_partition_lag_records", "Records not yet delivery-complete (KIP-1226 lag).", labels=gtp)
        for p in snap.partitions:
            labels = [p.group, p.topic, str(p.partition)]
            acquired.add_metric(labels, p.acquired_records_total)
            for ack_type in ACKNOWLEDGE_TYPES:
                acknowledged.add_metric(labels + [ack_type], p.acknowledged_records_total.get(ack_type, 0))
            expired.add_metric(labels, p.lock_expired_records_total)
            archived.add_metric(labels, p.delivery_limit_archived_records_total)
            in_flight.add_metric(labels, p.in_flight_records)
            runs.add_metric(labels, p.in_flight_runs)
            start.add_metric(labels, p.start_offset)
            end.add_metric(labels, p.end_offset)
            lag.add_metric(labels, p.lag_records)
        if snap.node_record_counts is not None and not any(p.acknowledged_records_total for p in snap.partitions):
            # Per-node counts only: same names, without the partition labels.
            counts = snap.node_record_counts
            acquired = CounterMetricFamily(acquired.name, acquired.documentation, value=counts.get("acquired", 0))
            acknowledged = CounterMetricFamily(acknowledged.name, acknowledged.documentation, labels=["type"])
            for ack_type in ACKNOWLEDGE_TYPES:
                acknowledged.add_metric([ack_type], counts.get(ack_type, 0))
            expired = CounterMetricFamily(expired.name, expired.documentation, value=counts.get("lock_expired", 0))
            archived = CounterMetricFamily(archived.name, archived.documentation, value=counts.get("archived_delivery_limit", 0))
        families: list[Metric] = [acquired, acknowledged, expired, archived, in_flight, runs, start, end, lag]
        families += [
            GaugeMetricFamily("shoal_share_partitions", "Share partitions led by this node.", value=len(snap.partitions)),
            CounterMetricFamily("shoal_share_fetch_requests", "ShareFetch requests received.", value=snap.fetch_requests_total),
            CounterMetricFamily("shoal_share_fetch_requests_failed", "ShareFetch requests that failed.", value=snap.fetch_requests_failed_total),
            CounterMetricFamily("shoal_share_acknowledge_requests", "ShareAcknowledge requests received.", value=snap.acknowledge_requests_total),
            CounterMetricFamily(
                "shoal_share_acknowledge_requests_failed",
                "ShareAcknowledge requests that failed.",
                value=snap.acknowledge_requests_failed_total,
            ),
        ]
        if snap.partition_load is not None:
            families.append(
                histogram_family(
                    "shoal_share_partition_load_seconds",
                    "Time to load a share partition's state from the share coordinator.",
                    snap.partition_load,
                )
            )
        else:
            families.append(CounterMetricFamily("shoal_share_partition_loads", "Share partitions loaded.", value=snap.loads_total))
            if snap.last_load_seconds is not None:
                families.append(
                    GaugeMetricFamily(
                        "shoal_share_partition_last_load_seconds",
                        "Duration of the last share-partition load.",
                        value=snap.last_load_seconds,
                    )
                )
        return families

    def _share_coordinator(self) -> Iterable[Metric]:
        if self.sources.share_coordinator is None:
            return []
        snap = self.sources.share_coordinator()
        families: list[Metric] = [
            CounterMetricFamily("shoal_share_state_writes", "Share-state writes applied by this node's share coordinators.", value=snap.writes_total),
            CounterMetricFamily("shoal_share_state_writes_failed", "Share-state writes that failed.", value=snap.writes_failed_total),
        ]
        documentation = "Share-state write latency, until durable (acks=all)."
        if snap.write_latency is not None:
            families.append(histogram_family("shoal_share_state_write_seconds", documentation, snap.write_latency))
        elif snap.write_seconds_sum is not None:
            families.append(
                SummaryMetricFamily(
                    "shoal_share_state_write_seconds",
                    documentation,
                    count_value=snap.write_seconds_count,
                    sum_value=snap.write_seconds_sum,
                )
            )
        return families


def histogram_family(name: str, documentation: str, recorder: LatencyRecorder) -> HistogramMetricFamily:
    buckets, total = recorder.snapshot()
    family = HistogramMetricFamily(name, documentation, labels=[])
    family.add_metric([], buckets=buckets, sum_value=total)
    return family


# ---------------------------------------------------------------------- RPC metrics


class RpcMetrics:
    """Per-RPC latency, request/response bytes and errors by code, kept as plain values."""

    def __init__(self) -> None:
        self.latency: dict[str, LatencyRecorder] = {}
        self.request_bytes_total: dict[str, int] = {}
        self.response_bytes_total: dict[str, int] = {}
        self.errors_total: dict[tuple[str, str], int] = {}

    def method(self, rpc: str) -> LatencyRecorder:
        """Bind the per-method entries once (when the method is first called)."""
        recorder = self.latency.get(rpc)
        if recorder is None:
            self.request_bytes_total.setdefault(rpc, 0)
            self.response_bytes_total.setdefault(rpc, 0)
            recorder = self.latency[rpc] = LatencyRecorder(RPC_BUCKETS_S)
        return recorder

    def add_request_bytes(self, rpc: str, size: int) -> None:
        self.request_bytes_total[rpc] = self.request_bytes_total.get(rpc, 0) + size

    def add_response_bytes(self, rpc: str, size: int) -> None:
        self.response_bytes_total[rpc] = self.response_bytes_total.get(rpc, 0) + size

    def add_error(self, rpc: str, code: str) -> None:
        key = (rpc, code)
        self.errors_total[key] = self.errors_total.get(key, 0) + 1

    def families(self) -> list[Metric]:
        latency = HistogramMetricFamily("shoal_rpc_duration_seconds", "Server-side gRPC call duration by method.", labels=["rpc"])
        request_bytes = CounterMetricFamily("shoal_rpc_request_bytes", "Serialized request bytes received by method.", labels=["rpc"])
        response_bytes = CounterMetricFamily("shoal_rpc_response_bytes", "Serialized response bytes sent by method.", labels=["rpc"])
        errors = CounterMetricFamily(
            "shoal_rpc_errors",
            "Failed calls by method and code (shoal ErrorCode from the trailer, else the gRPC status).",
            labels=["rpc", "code"],
        )
        for rpc, recorder in sorted(stable_copy(lambda: list(self.latency.items()))):
            buckets, total = recorder.snapshot()
            latency.add_metric([rpc], buckets=buckets, sum_value=total)
        for rpc, value in sorted(stable_copy(lambda: list(self.request_bytes_total.items()))):
            request_bytes.add_metric([rpc], value)
        for rpc, value in sorted(stable_copy(lambda: list(self.response_bytes_total.items()))):
            response_bytes.add_metric([rpc], value)
        for (rpc, code), value in sorted(stable_copy(lambda: list(self.errors_total.items()))):
            errors.add_metric([rpc, code], value)
        return [latency, request_bytes, response_bytes, errors]


ERROR_CODE_METADATA_KEY = "shoal-error-code"


def _error_code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str | None:
    """The failure code of a finished call: the shoal trailer, else the status name; None on success."""
    try:
        trailers = context.trailing_metadata() or ()
    except Exception:
        trailers = ()
    for key, value in trailers:
        if key == ERROR_CODE_METADATA_KEY:
            return str(value)
    try:
        code = context.code()
    except Exception:
        code = None
    if isinstance(code, grpc.StatusCode):
        if code != grpc.StatusCode.OK:
            return code.name
    elif isinstance(code, int) and code != 0:
        # grpc.aio may keep the raw status integer.
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
        return str(code)
    if exc is None:
        return None
    if isinstance(exc, BaseException) and type(exc).__name__ == "CancelledError":
        return grpc.StatusCode.CANCELLED.name
    return grpc.StatusCode.UNKNOWN.name


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """A grpc.aio server interceptor: per-RPC latency, request/response bytes, errors by code.

    It wraps the method handler once per call (cheap: a closure) rather than
    decoding anything: bytes are counted in the (de)serializers, which see the
    wire bytes anyway.
    """

    def __init__(self, rpc: RpcMetrics) -> None:
        self.rpc = rpc

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        rpc_name = handler_call_details.method.rsplit("/", 1)[-1]
        return _wrap_handler(handler, rpc_name, self.rpc)


def _wrap_handler(handler: grpc.RpcMethodHandler, rpc_name: str, metrics: RpcMetrics) -> grpc.RpcMethodHandler:
    recorder = metrics.method(rpc_name)
    deserialize = handler.request_deserializer
    serialize = handler.response_serializer

    def counting_deserializer(data: bytes) -> Any:
        metrics.add_request_bytes(rpc_name, len(data))
        return deserialize(data) if deserialize is not None else data

    def counting_serializer(message: Any) -> bytes:
        data = serialize(message) if serialize is not None else message
        metrics.add_response_bytes(rpc_name, len(data))
        return data

    def finish(context: grpc.aio.ServicerContext, started: float, exc: BaseException | None) -> None:
        recorder.observe(time.perf_counter() - started)
        code = _error_code(context, exc)
        if code is not None:
            metrics.add_error(rpc_name, code)

    if handler.unary_unary is not None or handler.stream_unary is not None:
        inner = handler.unary_unary or handler.stream_unary

        async def unary_response(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                return await inner(request_or_iterator, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                finish(context, started, error)

        factory = grpc.unary_unary_rpc_method_handler if handler.unary_unary is not None else grpc.stream_unary_rpc_method_handler
        return factory(unary_response, request_deserializer=counting_deserializer, response_serializer=counting_serializer)

    inner_stream = handler.unary_stream or handler.stream_stream

    async def stream_response(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            result = inner_stream(request_or_iterator, context)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    yield response
            else:
                # A handler that writes with context.write() and returns None.
                await result
        except BaseException as exc:
            error = exc
            raise
        finally:
            finish(context, started, error)

    factory = grpc.unary_stream_rpc_method_handler if handler.unary_stream is not None else grpc.stream_stream_rpc_method_handler
    return factory(stream_response, request_deserializer=counting_deserializer, response_serializer=counting_serializer)


# ---------------------------------------------------------------------- the bundle


class NodeMetrics:
    """Everything a node needs: its registry, sources, collector, interceptor, HTTP server."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.registry = CollectorRegistry(auto_describe=False)
        self.sources = MetricSources()
        self.rpc = RpcMetrics()
        self.collector = NodeCollector(node_id, self.sources, self.rpc)
        self.registry.register(self.collector)
        self.interceptor = MetricsInterceptor(self.rpc)
        self._server: Any = None
        self._thread: Any = None

    def start_server(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics on host:port (0: any free port); returns the bound port."""
        self._server, self._thread = start_metrics_server(port, self.registry, host)
        return self._server.server_port

    def stop_server(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def start_metrics_server(port: int, registry: CollectorRegistry, host: str = "127.0.0.1") -> tuple[Any, Any]:
    """Serve ``registry`` at http://host:port/metrics from a daemon thread; returns (server, thread).

    Loopback by default: metrics name topics and groups, and a local cluster
    should not expose them beyond the machine unless asked.
    """
    return start_http_server(port, addr=host, registry=registry)
