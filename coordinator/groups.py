"""The group coordinator of one ``__consumer_offsets`` partition (pure core).

Rules
-----
* **One namespace.** A group id belongs to the type that created it (a share
  group by a ShareGroupHeartbeat, a consumer group by a ConsumerGroupHeartbeat
  or a generation-less offset commit). A share RPC on a consumer group is
  refused with GROUP_ID_NOT_FOUND ("Group X is not a share group.", as Kafka);
  a consumer-group heartbeat or commit on a share group with
  INCONSISTENT_GROUP_PROTOCOL; reads of the wrong type (describe, fetch
  offsets) with GROUP_ID_NOT_FOUND.
* **Membership** (KIP-848 / KIP-932 heartbeats). The client picks its member id
  (a UUID string) and joins with member epoch 0; -1 leaves. Any other epoch
  must equal the member's current epoch (FENCED_MEMBER_EPOCH otherwise; a
  consumer-group member may also use its previous epoch when its owned
  partitions are a subset of its assignment, as KIP-848 allows for lost
  responses). A member the coordinator does not know gets UNKNOWN_MEMBER_ID and
  rejoins with epoch 0. Leaving twice is harmless.
* **Group epoch** bumps on join, leave, expiry, subscription change and topic
  metadata change of a subscribed topic. Each bump recomputes the target
  assignment at once (assignment epoch = group epoch). A member adopts the
  target, and the new epoch, on its next heartbeat.
* **Share groups have no revocation phase**: a partition may be shared, so the
  member receives its target directly.
* **Consumer groups never give a partition to two members at once**: a
  partition moving from A to B is first removed from A's assignment and held as
  "pending revocation" until A reports (``owned_partitions``) that it no longer
  owns it, or A leaves or expires; only then can B receive it. A member with a
  pending revocation keeps its old epoch until the revocation completes.
* **Persistence.** Every change of the persisted part (group type, epoch and
  subscribed topics; group configs; initialized share partitions; committed
  offsets) is made by applying a record from ``group_records`` — live
  operations and ``replay`` run the same ``_apply`` — and the operation returns
  those records for the shell to append. Members are not persisted: after a
  coordinator move the group is Empty, its members get UNKNOWN_MEMBER_ID,
  rejoin, and the group epoch continues from the persisted one.
* **Limits**: members per group (``group.share.max.size`` /
  ``group.consumer.max.size``), groups per shard (``group.coordinator.max.
  groups``), offset metadata size, id and name lengths (constants below). A
  refused operation changes nothing.

Theory of operation
-------------------
The shell calls an operation with ``now_ms`` and gets ``(result, records)``.
It appends the records to the shard's partition and answers the client once
they are durable. Session timeouts use one heap of (deadline_ms, group, member)
entries; ``next_deadline_ms()`` tells the shell when to call ``expire(now_ms)``
(one timer per shard, re-armed after each call). Stale heap entries (a member
that heartbeated since) are skipped, and the heap is rebuilt when it holds more
than twice the live members, so it stays bounded.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from coordinator.assignor import assign_consumer, assign_share
from coordinator.config import (
    EffectiveConsumerSettings,
    EffectiveShareSettings,
    GroupBrokerConfig,
    effective_consumer_settings,
    effective_share_settings,
    validate_group_config,
)
from coordinator.errors import ErrorCode, OperatingError
from coordinator.group_records import (
    GROUP_TYPES,
    GroupConfigRecord,
    GroupConfigTombstone,
    GroupMetadataRecord,
    GroupMetadataTombstone,
    GroupRecord,
    GroupType,
    OffsetCommitRecord,
    OffsetCommitTombstone,
    ShareGroupPartitionsRecord,
    ShareGroupPartitionsTombstone,
    decode,
)

TopicPartition = tuple[str, int]
GroupState = Literal["Empty", "Stable", "Dead"]
GROUP_STATES: tuple[GroupState, ...] = ("Empty", "Stable", "Dead")

#: Longest group id, member id, client id / host and topic name accepted
#: (characters). Kafka's only bound is the protocol's 32767; shoal keeps ids
#: short enough to be cheap keys and metric-free labels.
GROUP_ID_LENGTH_MAX = 255
MEMBER_ID_LENGTH_MAX = 255
CLIENT_FIELD_LENGTH_MAX = 1024
TOPIC_NAME_LENGTH_MAX = 249
#: Topics one member may subscribe to.
SUBSCRIBED_TOPICS_MAX = 10_000

MEMBER_EPOCH_JOIN = 0
MEMBER_EPOCH_LEAVE = -1


def _refuse(code: ErrorCode, message: str) -> OperatingError:
    return OperatingError(code, message)


@dataclass(frozen=True)
class ShareHeartbeatResult:
    member_id: str
    member_epoch: int
    heartbeat_interval_ms: int
    assignment: frozenset[TopicPartition]


@dataclass(frozen=True)
class ConsumerHeartbeatResult:
    member_id: str
    member_epoch: int
    heartbeat_interval_ms: int
    assignment: frozenset[TopicPartition]


@dataclass(frozen=True)
class CommittedOffset:
    offset: int
    metadata: str
    commit_timestamp_ms: int


@dataclass(frozen=True)
class GroupListing:
    group_id: str
    group_type: GroupType
    state: GroupState


@dataclass(frozen=True)
class MemberDescription:
    member_id: str
    client_id: str
    client_host: str
    member_epoch: int
    subscribed_topics: frozenset[str]
    assignment: frozenset[TopicPartition]
    #: Consumer groups only: what the member will own once reconciled
    #: (equal to ``assignment`` for share groups).
    target_assignment: frozenset[TopicPartition]


@dataclass(frozen=True)
class GroupDescription:
    group_id: str
    group_type: GroupType
    state: GroupState
    group_epoch: int
    assignment_epoch: int
    assignor: str
    members: tuple[MemberDescription, ...]


@dataclass
class _Member:
    member_id: str
    client_id: str
    client_host: str
    member_epoch: int
    previous_member_epoch: int
    subscribed_topics: frozenset[str]
    #: Share: the assignment last handed out. Consumer: the partitions the member
    #: may own now (never claimed by another member).
    assignment: frozenset[TopicPartition]
    #: Consumer groups only: partitions taken from the member that it has not yet
    #: reported as released; still claimed by it.
    pending_revocation: frozenset[TopicPartition]
    deadline_ms: int


@dataclass
class _Group:
    group_id: str
    group_type: GroupType
    group_epoch: int
    subscribed_topics: tuple[str, ...]
    assignment_epoch: int
    target: dict[str, frozenset[TopicPartition]] = field(default_factory=dict)
    members: dict[str, _Member] = field(default_factory=dict)
    #: Consumer groups only: partition → the member that has it in its
    #: assignment or pending revocation. At most one claimant per partition.
    claims: dict[TopicPartition, str] = field(default_factory=dict)


class GroupCoordinatorShard:
    """Share groups and consumer groups of one ``__consumer_offsets`` partition."""

    def __init__(self, broker: GroupBrokerConfig) -> None:
        self._broker = broker
        self._groups: dict[str, _Group] = {}
        # Persisted parts kept apart from _groups: after compaction a group's
        # offsets or configs may be replayed before its metadata record.
        self._configs: dict[str, dict[str, str]] = {}
        self._initialized: dict[str, frozenset[TopicPartition]] = {}
        self._offsets: dict[str, dict[TopicPartition, CommittedOffset]] = {}
        self._topic_partitions: dict[str, int] = {}
        self._deadlines: list[tuple[int, str, str]] = []
        self._live_members = 0
        # Share groups whose offsets an admin is changing: group -> until when
        # (ms) joins are refused. Not persisted: a new coordinator fails the
        # change in flight anyway (its final step runs on this shard).
        self._offsets_changing: dict[str, int] = {}
        #: Target-assignment recomputations per group type (Kafka's rebalance-count).
        self.rebalance_counts: dict[GroupType, int] = {t: 0 for t in GROUP_TYPES}

    # ------------------------------------------------------------------
    # Loading and replay
    # ------------------------------------------------------------------

    @classmethod
    def load(
        cls, records: Iterable[tuple[bytes, bytes | None]], broker: GroupBrokerConfig
    ) -> GroupCoordinatorShard:
        """A shard rebuilt by replaying encoded records in log order."""
        shard = cls(broker)
        for key, value in records:
            shard.replay(key, value)
        return shard

    def replay(self, key: bytes, value: bytes | None) -> None:
        """Applies one record read from the partition (during loading)."""
        self._apply(decode(key, value))

    def snapshot_records(self) -> list[GroupRecord]:
        """Records that rebuild the persisted state, in a deterministic order.

        Useful to compact the partition, and to compare two shards' persisted
        state (a loaded shard must produce the same list as the live one).
        """
        records: list[GroupRecord] = []
        for group_id in sorted(self._groups):
            group = self._groups[group_id]
            records.append(
                GroupMetadataRecord(group_id, group.group_type, group.group_epoch, group.subscribed_topics)
            )
        for group_id in sorted(self._configs):
            records.append(GroupConfigRecord(group_id, tuple(sorted(self._configs[group_id].items()))))
        for group_id in sorted(self._initialized):
            records.append(ShareGroupPartitionsRecord(group_id, tuple(sorted(self._initialized[group_id]))))
        for group_id in sorted(self._offsets):
            for (topic, partition), committed in sorted(self._offsets[group_id].items()):
                records.append(
                    OffsetCommitRecord(
                        group_id, topic, partition, committed.offset, committed.metadata,
                        committed.commit_timestamp_ms,
                    )
                )
        return records

    def _apply(self, record: GroupRecord) -> None:
        match record:
            case GroupMetadataRecord(group_id, group_type, group_epoch, topics):
                group = self._groups.get(group_id)
                if group is None:
                    self._groups[group_id] = _Group(
                        group_id, group_type, group_epoch, tuple(topics), assignment_epoch=group_epoch
                    )
                else:
                    assert group.group_type == group_type or not group.members, (
                        f"group {group_id} changed type with live members"
                    )
                    assert group_epoch >= group.group_epoch, f"group {group_id} epoch went back"
                    group.group_type = group_type
                    group.group_epoch = group_epoch
                    group.subscribed_topics = tuple(topics)
            case GroupMetadataTombstone(group_id):
                group = self._groups.pop(group_id, None)
                assert group is None or not group.members, f"deleted group {group_id} had members"
            case GroupConfigRecord(group_id, configs):
                self._configs[group_id] = dict(configs)
            case GroupConfigTombstone(group_id):
                self._configs.pop(group_id, None)
            case ShareGroupPartitionsRecord(group_id, partitions):
                self._initialized[group_id] = frozenset(partitions)
            case ShareGroupPartitionsTombstone(group_id):
                self._initialized.pop(group_id, None)
            case OffsetCommitRecord(group_id, topic, partition, offset, metadata, timestamp_ms):
                self._offsets.setdefault(group_id, {})[(topic, partition)] = CommittedOffset(
                    offset, metadata, timestamp_ms
                )
            case OffsetCommitTombstone(group_id, topic, partition):
                offsets = self._offsets.get(group_id)
                if offsets is not None:
                    offsets.pop((topic, partition), None)
                    if not offsets:
                        del self._offsets[group_id]
            case _:
                raise AssertionError(f"not a group record: {record!r}")

    def _emit(self, records: list[GroupRecord], record: GroupRecord) -> None:
        self._apply(record)
        records.append(record)

    # ------------------------------------------------------------------
    # Settings
    # ------------------------------------------------------------------

    @property
    def broker(self) -> GroupBrokerConfig:
        return self._broker

    def share_settings(self, group_id: str) -> EffectiveShareSettings:
        """Settings in force for a share group (the shell passes the share
        partition's part of them to its share partitions)."""
        return effective_share_settings(self._configs.get(group_id, {}), self._broker)

    def consumer_settings(self, group_id: str) -> EffectiveConsumerSettings:
        return effective_consumer_settings(self._configs.get(group_id, {}), self._broker)

    # ------------------------------------------------------------------
    # Share-group heartbeat
    # ------------------------------------------------------------------

    def share_group_heartbeat(
        self,
        group_id: str,
        member_id: str,
        member_epoch: int,
        subscribed_topics: list[str] | None,
        client_id: str,
        client_host: str,
        now_ms: int,
    ) -> tuple[ShareHeartbeatResult, list[GroupRecord]]:
        """ShareGroupHeartbeat: join (epoch 0), heartbeat, or leave (epoch -1)."""
        _check_group_id(group_id)
        _check_member_id(member_id)
        _check_client_fields(client_id, client_host)
        topics = _check_subscription(subscribed_topics)
        group = self._groups.get(group_id)
        if group is not None and group.group_type != "share":
            raise _refuse(ErrorCode.GROUP_ID_NOT_FOUND, f"Group {group_id} is not a share group.")
        settings = self.share_settings(group_id)
        interval_ms = settings.heartbeat_interval_ms
        records: list[GroupRecord] = []

        if member_epoch == MEMBER_EPOCH_LEAVE:
            if group is not None and member_id in group.members:
                self._remove_members(group, [member_id], records)
            return ShareHeartbeatResult(member_id, MEMBER_EPOCH_LEAVE, interval_ms, frozenset()), records

        if member_epoch == MEMBER_EPOCH_JOIN:
            if topics is None:
                raise _refuse(
                    ErrorCode.INVALID_REQUEST,
                    "SubscribedTopicNames must be set when joining a share group (member epoch 0).",
                )
            if self._offsets_changing.get(group_id, -1) > now_ms:
                raise _refuse(
                    ErrorCode.REBALANCE_IN_PROGRESS,
                    f"The offsets of share group {group_id} are being reset; retry the join shortly.",
                )
            self._check_can_join(group, group_id, member_id, "share")
            group = self._join(group, group_id, "share", member_id, topics, client_id, client_host, records)
        elif member_epoch < MEMBER_EPOCH_LEAVE:
            raise _refuse(ErrorCode.INVALID_REQUEST, f"Member epoch {member_epoch} is not valid.")
        else:
            member = self._known_member(group, group_id, member_id)
            assert group is not None
            if member_epoch != member.member_epoch:
                raise _refuse(
                    ErrorCode.FENCED_MEMBER_EPOCH,
                    f"Member {member_id} of group {group_id} sent epoch {member_epoch} but its epoch "
                    f"is {member.member_epoch}; rejoin with member epoch 0.",
                )
            if topics is not None and topics != member.subscribed_topics:
                member.subscribed_topics = topics
                self._bump(group, records)

        member = group.members[member_id]
        member.client_id, member.client_host = client_id, client_host
        if member.member_epoch < group.assignment_epoch:
            member.previous_member_epoch = member.member_epoch
            member.member_epoch = group.assignment_epoch
            member.assignment = group.target.get(member_id, frozenset())
        self._arm_deadline(group, member, now_ms + settings.session_timeout_ms)
        return (
            ShareHeartbeatResult(member_id, member.member_epoch, interval_ms, member.assignment),
            records,
        )

    # ------------------------------------------------------------------
    # Consumer-group heartbeat
    # ------------------------------------------------------------------

    def consumer_group_heartbeat(
        self,
        group_id: str,
        member_id: str,
        member_epoch: int,
        subscribed_topics: list[str] | None,
        owned_partitions: set[TopicPartition] | frozenset[TopicPartition] | None,
        now_ms: int,
        *,
        client_id: str = "",
        client_host: str = "",
    ) -> tuple[ConsumerHeartbeatResult, list[GroupRecord]]:
        """ConsumerGroupHeartbeat (KIP-848): join (0), heartbeat, or leave (-1).

        ``owned_partitions`` is what the member currently owns (None = not
        reported, unchanged since the last heartbeat).
        """
        _check_group_id(group_id)
        _check_member_id(member_id)
        _check_client_fields(client_id, client_host)
        topics = _check_subscription(subscribed_topics)
        owned = None if owned_partitions is None else frozenset(owned_partitions)
        group = self._groups.get(group_id)
        if group is not None and group.group_type != "consumer":
            raise _refuse(
                ErrorCode.INCONSISTENT_GROUP_PROTOCOL,
                f"Group {group_id} is a share group; it cannot be used as a consumer group.",
            )
        settings = self.consumer_settings(group_id)
        interval_ms = settings.heartbeat_interval_ms
        records: list[GroupRecord] = []

        if member_epoch == MEMBER_EPOCH_LEAVE:
            if group is not None and member_id in group.members:
                self._remove_members(group, [member_id], records)
            return (
                ConsumerHeartbeatResult(member_id, MEMBER_EPOCH_LEAVE, interval_ms, frozenset()),
                records,
            )

        if member_epoch == MEMBER_EPOCH_JOIN:
            if topics is None:
                raise _refuse(
                    ErrorCode.INVALID_REQUEST,
                    "SubscribedTopicNames must be set when joining a consumer group (member epoch 0).",
                )
            self._check_can_join(group, group_id, member_id, "consumer")
            group = self._join(group, group_id, "consumer", member_id, topics, client_id, client_host, records)
        elif member_epoch < MEMBER_EPOCH_LEAVE:
            raise _refuse(ErrorCode.INVALID_REQUEST, f"Member epoch {member_epoch} is not valid.")
        else:
            member = self._known_member(group, group_id, member_id)
            assert group is not None
            lost_response = (
                member_epoch == member.previous_member_epoch
                and owned is not None
                and owned <= member.assignment
            )
            if member_epoch != member.member_epoch and not lost_response:
                raise _refuse(
                    ErrorCode.FENCED_MEMBER_EPOCH,
                    f"Member {member_id} of group {group_id} sent epoch {member_epoch} but its epoch "
                    f"is {member.member_epoch}; rejoin with member epoch 0.",
                )
            if topics is not None and topics != member.subscribed_topics:
                member.subscribed_topics = topics
                self._bump(group, records)

        member = group.members[member_id]
        member.client_id, member.client_host = client_id, client_host
        self._reconcile(group, member, owned)
        self._arm_deadline(group, member, now_ms + settings.session_timeout_ms)
        return (
            ConsumerHeartbeatResult(member_id, member.member_epoch, interval_ms, member.assignment),
            records,
        )

    def _reconcile(self, group: _Group, member: _Member, owned: frozenset[TopicPartition] | None) -> None:
        """Moves a consumer-group member toward its target without double owners.

        1. Partitions the member no longer reports owning stop being pending:
           they are free for others.
        2. Pending partitions that are back in the target return to the member.
        3. If partitions must be revoked, they leave the assignment and become
           pending; the epoch stays until the member confirms (step 1 later).
        4. Otherwise the member takes the target epoch and every target
           partition nobody else claims.
        """
        target = group.target.get(member.member_id, frozenset())
        if owned is not None:
            released = member.pending_revocation - owned
            for tp in released:
                assert group.claims.get(tp) == member.member_id
                del group.claims[tp]
            member.pending_revocation -= released
        back = member.pending_revocation & target
        if back:
            member.pending_revocation -= back
            member.assignment |= back
        if member.pending_revocation:
            return
        revoke = member.assignment - target
        if revoke:
            member.assignment -= revoke
            member.pending_revocation = revoke
            return
        if member.member_epoch < group.assignment_epoch:
            member.previous_member_epoch = member.member_epoch
            member.member_epoch = group.assignment_epoch
        free = frozenset(tp for tp in target - member.assignment if tp not in group.claims)
        for tp in free:
            group.claims[tp] = member.member_id
        member.assignment |= free

    # ------------------------------------------------------------------
    # Membership helpers
    # ------------------------------------------------------------------

    def _check_can_join(self, group: _Group | None, group_id: str, member_id: str, group_type: GroupType) -> None:
        if group is None:
            if len(self._groups) >= self._broker.max_groups:
                raise _refuse(
                    ErrorCode.GROUP_MAX_SIZE_REACHED,
                    f"This group coordinator already holds {self._broker.max_groups} groups "
                    "(group.coordinator.max.groups); delete unused groups or raise the limit.",
                )
            return
        if member_id in group.members:
            return
        if group_type == "share":
            size_max, name = self._broker.share_max_size, "group.share.max.size"
        else:
            size_max, name = self._broker.consumer_max_size, "group.consumer.max.size"
        if len(group.members) >= size_max:
            raise _refuse(
                ErrorCode.GROUP_MAX_SIZE_REACHED,
                f"Group {group_id} already has {size_max} members ({name}).",
            )

    def _join(
        self,
        group: _Group | None,
        group_id: str,
        group_type: GroupType,
        member_id: str,
        topics: frozenset[str],
        client_id: str,
        client_host: str,
        records: list[GroupRecord],
    ) -> _Group:
        """Adds (or re-adds) a member with epoch 0 and bumps the group epoch
        when the group's subscriptions changed."""
        if group is None:
            # The epoch-0 record is applied but not emitted: a new member always
            # bumps the epoch below, and that record alone recreates the group.
            self._apply(GroupMetadataRecord(group_id, group_type, 0, ()))
            group = self._groups[group_id]
        previous = group.members.get(member_id)
        if previous is None:
            self._live_members += 1
        else:
            # A rejoin (epoch 0) means the client dropped everything it owned.
            self._release_claims(group, previous)
        group.members[member_id] = _Member(
            member_id, client_id, client_host, member_epoch=0, previous_member_epoch=-1,
            subscribed_topics=topics, assignment=frozenset(), pending_revocation=frozenset(),
            deadline_ms=0,
        )
        if previous is None or previous.subscribed_topics != topics:
            self._bump(group, records)
        return group

    def _known_member(self, group: _Group | None, group_id: str, member_id: str) -> _Member:
        member = None if group is None else group.members.get(member_id)
        if member is None:
            raise _refuse(
                ErrorCode.UNKNOWN_MEMBER_ID,
                f"Member {member_id} is not a member of group {group_id}; rejoin with member epoch 0.",
            )
        return member

    def _release_claims(self, group: _Group, member: _Member) -> None:
        for tp in member.assignment | member.pending_revocation:
            if group.claims.get(tp) == member.member_id:
                del group.claims[tp]

    def _remove_members(self, group: _Group, member_ids: list[str], records: list[GroupRecord]) -> None:
        for member_id in member_ids:
            member = group.members.pop(member_id)
            self._live_members -= 1
            self._release_claims(group, member)
            group.target.pop(member_id, None)
        self._bump(group, records)

    def _bump(self, group: _Group, records: list[GroupRecord]) -> None:
        """New group epoch: persist it with the subscription union and
        recompute the target assignment."""
        topics = tuple(sorted(set().union(*(m.subscribed_topics for m in group.members.values()))))
        self._emit(
            records, GroupMetadataRecord(group.group_id, group.group_type, group.group_epoch + 1, topics)
        )
        subscriptions = {m.member_id: m.subscribed_topics for m in group.members.values()}
        assign = assign_share if group.group_type == "share" else assign_consumer
        group.target = {
            member_id: frozenset(partitions)
            for member_id, partitions in assign(subscriptions, self._topic_partitions, group.target).items()
        }
        group.assignment_epoch = group.group_epoch
        self.rebalance_counts[group.group_type] += 1

    def _arm_deadline(self, group: _Group, member: _Member, deadline_ms: int) -> None:
        member.deadline_ms = deadline_ms
        heapq.heappush(self._deadlines, (deadline_ms, group.group_id, member.member_id))
        if len(self._deadlines) > 2 * self._live_members + 1024:
            self._deadlines = [
                (m.deadline_ms, g.group_id, m.member_id)
                for g in self._groups.values()
                for m in g.members.values()
            ]
            heapq.heapify(self._deadlines)

    def _deadline_is_live(self, entry: tuple[int, str, str]) -> bool:
        deadline_ms, group_id, member_id = entry
        group = self._groups.get(group_id)
        member = None if group is None else group.members.get(member_id)
        return member is not None and member.deadline_ms == deadline_ms

    # ------------------------------------------------------------------
    # Liveness
    # ------------------------------------------------------------------

    def next_deadline_ms(self) -> int | None:
        """When the earliest member session expires (None without members)."""
        while self._deadlines and not self._deadline_is_live(self._deadlines[0]):
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def expire(self, now_ms: int) -> tuple[list[tuple[str, str]], list[GroupRecord]]:
        """Removes members whose session timed out (deadline <= now_ms).

        Returns the removed (group id, member id) pairs — the shell releases
        the records those share-group members had acquired — and the records.
        """
        expired: dict[str, list[str]] = {}
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            entry = heapq.heappop(self._deadlines)
            if self._deadline_is_live(entry):
                expired.setdefault(entry[1], []).append(entry[2])
        records: list[GroupRecord] = []
        removed: list[tuple[str, str]] = []
        for group_id in sorted(expired):
            member_ids = sorted(set(expired[group_id]))
            self._remove_members(self._groups[group_id], member_ids, records)
            removed.extend((group_id, m) for m in member_ids)
        return removed, records

    # ------------------------------------------------------------------
    # Topic metadata
    # ------------------------------------------------------------------

    def set_topic_partitions(
        self, topics: Mapping[str, int], now_ms: int
    ) -> tuple[list[GroupRecord], list[tuple[str, str, int]]]:
        """Installs the cluster's topic → partition count map.

        Groups whose members subscribe to a topic that appeared, disappeared or
        changed its partition count get a new group epoch. Partitions that
        disappeared since the previous call lose their committed offsets and
        their share-state initialization; the returned (group id, topic,
        partition) triples name the share state the shell must delete from the
        share coordinator. (Only differences between consecutive calls count as
        deletions, so a shard that starts with an empty map deletes nothing.)
        """
        for topic, count in topics.items():
            assert count >= 0, f"topic {topic} has {count} partitions"
        old = self._topic_partitions
        new = dict(topics)
        changed = {t for t in set(old) | set(new) if old.get(t, 0) != new.get(t, 0)}
        removed = {
            (t, p) for t in changed for p in range(new.get(t, 0), old.get(t, 0))
        }
        self._topic_partitions = new
        records: list[GroupRecord] = []
        for group_id in sorted(self._groups):
            group = self._groups[group_id]
            if any(changed & m.subscribed_topics for m in group.members.values()):
                self._bump(group, records)
        deleted_share_state: list[tuple[str, str, int]] = []
        if removed:
            for group_id in sorted(self._offsets):
                for topic, partition in sorted(set(self._offsets[group_id]) & removed):
                    self._emit(records, OffsetCommitTombstone(group_id, topic, partition))
            for group_id in sorted(self._initialized):
                gone = self._initialized[group_id] & removed
                if gone:
                    self._set_initialized(group_id, self._initialized[group_id] - gone, records)
                    deleted_share_state.extend((group_id, t, p) for t, p in sorted(gone))
        return records, deleted_share_state

    def topic_partitions(self) -> dict[str, int]:
        return dict(self._topic_partitions)

    # ------------------------------------------------------------------
    # Admin: list, describe, delete
    # ------------------------------------------------------------------

    def list_groups(
        self,
        types: Iterable[GroupType] | None = None,
        states: Iterable[str] | None = None,
    ) -> list[GroupListing]:
        """Groups of the given types and states (None = all), by group id.
        State names match case-insensitively, as Kafka's ListGroups does."""
        type_filter = None if types is None else set(types)
        state_filter = None if states is None else {s.lower() for s in states}
        listings = []
        for group_id in sorted(self._groups):
            group = self._groups[group_id]
            state = _state(group)
            if type_filter is not None and group.group_type not in type_filter:
                continue
            if state_filter is not None and state.lower() not in state_filter:
                continue
            listings.append(GroupListing(group_id, group.group_type, state))
        return listings

    def describe_share_group(self, group_id: str) -> GroupDescription:
        group = self._groups.get(group_id)
        if group is None:
            raise _refuse(ErrorCode.GROUP_ID_NOT_FOUND, f"Group {group_id} not found.")
        if group.group_type != "share":
            raise _refuse(ErrorCode.GROUP_ID_NOT_FOUND, f"Group {group_id} is not a share group.")
        return self._describe(group, "simple")

    def describe_consumer_group(self, group_id: str) -> GroupDescription:
        group = self._groups.get(group_id)
        if group is None:
            raise _refuse(ErrorCode.GROUP_ID_NOT_FOUND, f"Group {group_id} not found.")
        if group.group_type != "consumer":
            raise _refuse(ErrorCode.GROUP_ID_NOT_FOUND, f"Group {group_id} is not a consumer group.")
        return self._describe(group, "uniform")

    def _describe(self, group: _Group, assignor: str) -> GroupDescription:
        members = tuple(
            MemberDescription(
                m.member_id, m.client_id, m.client_host, m.member_epoch, m.subscribed_topics,
                m.assignment, group.target.get(m.member_id, frozenset()),
            )
            for _, m in sorted(group.members.items())
        )
        return GroupDescription(
            group.group_id, group.group_type, _state(group), group.group_epoch,
            group.assignment_epoch, assignor, members,
        )

    def delete_group(self, group_id: str) -> tuple[list[GroupRecord], frozenset[TopicPartition]]:
        """Deletes an empty group with its configs, offsets and share-state
        bookkeeping. Returns the records and the share partitions whose state
        the shell must delete from the share coordinator."""
        group = self._groups.get(group_id)
        if group is None:
            raise _refuse(ErrorCode.GROUP_ID_NOT_FOUND, f"Group {group_id} not found.")
        if group.members:
            raise _refuse(
                ErrorCode.GROUP_NOT_EMPTY,
                f"Group {group_id} has {len(group.members)} active members; stop them first.",
            )
        records: list[GroupRecord] = []
        for topic, partition in sorted(self._offsets.get(group_id, {})):
            self._emit(records, OffsetCommitTombstone(group_id, topic, partition))
        share_partitions = self._initialized.get(group_id, frozenset())
        if group_id in self._initialized:
            self._emit(records, ShareGroupPartitionsTombstone(group_id))
        if group_id in self._configs:
            self._emit(records, GroupConfigTombstone(group_id))
        self._emit(records, GroupMetadataTombstone(group_id))
        return records, share_partitions

    # ------------------------------------------------------------------
    # Admin: group configs
    # ------------------------------------------------------------------

    def describe_group_configs(self, group_id: str) -> dict[str, str]:
        """The group's stored overrides (a group id may have configs and no group)."""
        return dict(self._configs.get(group_id, {}))

    def alter_group_configs(
        self,
        group_id: str,
        updates: Mapping[str, str | None],
        broker: GroupBrokerConfig | None = None,
    ) -> list[GroupRecord]:
        """Sets (value) or removes (None) overrides, validating the resulting
        complete set against ``broker`` (default: this shard's broker config)."""
        _check_group_id(group_id)
        merged = dict(self._configs.get(group_id, {}))
        for name, value in updates.items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        validated = validate_group_config(merged, broker or self._broker)
        if group_id not in self._configs and validated and len(self._configs) >= self._broker.max_groups:
            raise _refuse(
                ErrorCode.GROUP_MAX_SIZE_REACHED,
                f"Configs are stored for {self._broker.max_groups} group ids already "
                "(group.coordinator.max.groups).",
            )
        records: list[GroupRecord] = []
        if validated == self._configs.get(group_id, {}):
            return records
        if validated:
            self._emit(records, GroupConfigRecord(group_id, tuple(sorted(validated.items()))))
        else:
            self._emit(records, GroupConfigTombstone(group_id))
        return records

    # ------------------------------------------------------------------
    # Consumer-group offsets
    # ------------------------------------------------------------------

    def commit_offsets(
        self,
        group_id: str,
        member_id: str,
        member_epoch: int,
        offsets: Mapping[TopicPartition, tuple[int, str]],
        now_ms: int,
    ) -> list[GroupRecord]:
        """OffsetCommit for a consumer group (atomic: all or nothing).

        A member commits with its current epoch (STALE_MEMBER_EPOCH otherwise).
        A generation-less commit (member epoch < 0, as admin tools send) is
        allowed only while the group has no members, and creates the group.
        """
        _check_group_id(group_id)
        group = self._groups.get(group_id)
        if group is not None and group.group_type != "consumer":
            raise _refuse(
                ErrorCode.INCONSISTENT_GROUP_PROTOCOL,
                f"Group {group_id} is a share group; it cannot be used as a consumer group.",
            )
        if member_epoch < 0:
            if group is not None and group.members:
                raise _refuse(
                    ErrorCode.UNKNOWN_MEMBER_ID,
                    f"Group {group_id} has active members; commits without a member epoch are "
                    "only allowed while the group is empty.",
                )
            if group is None and len(self._groups) >= self._broker.max_groups:
                raise _refuse(
                    ErrorCode.GROUP_MAX_SIZE_REACHED,
                    f"This group coordinator already holds {self._broker.max_groups} groups "
                    "(group.coordinator.max.groups).",
                )
        else:
            member = self._known_member(group, group_id, member_id)
            if member_epoch != member.member_epoch:
                raise _refuse(
                    ErrorCode.STALE_MEMBER_EPOCH,
                    f"Member {member_id} committed with epoch {member_epoch} but its epoch is "
                    f"{member.member_epoch}; heartbeat and retry.",
                )
        for (topic, partition), (offset, metadata) in offsets.items():
            if not 0 <= partition < self._topic_partitions.get(topic, 0):
                raise _refuse(
                    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                    f"Partition {topic}-{partition} does not exist (yet); refresh metadata and retry.",
                )
            if offset < 0:
                raise _refuse(ErrorCode.INVALID_REQUEST, f"Offset {offset} for {topic}-{partition} is negative.")
            if len(metadata.encode("utf-8")) > self._broker.offset_metadata_max_bytes:
                raise _refuse(
                    ErrorCode.INVALID_COMMIT_OFFSET_SIZE,
                    f"Metadata for {topic}-{partition} is larger than "
                    f"{self._broker.offset_metadata_max_bytes} bytes (offset.metadata.max.bytes).",
                )
        records: list[GroupRecord] = []
        if group is None:
            self._emit(records, GroupMetadataRecord(group_id, "consumer", 0, ()))
        for (topic, partition), (offset, metadata) in sorted(offsets.items()):
            self._emit(records, OffsetCommitRecord(group_id, topic, partition, offset, metadata, now_ms))
        return records

    def fetch_offsets(
        self, group_id: str, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, CommittedOffset]:
        """Committed offsets of a consumer group (all, or those asked for). A
        partition without a committed offset is absent from the result."""
        group = self._groups.get(group_id)
        if group is not None and group.group_type != "consumer":
            raise _refuse(
                ErrorCode.GROUP_ID_NOT_FOUND,
                f"Group {group_id} is a share group, not a consumer group; use share-group offsets.",
            )
        committed = self._offsets.get(group_id, {})
        if partitions is None:
            return dict(committed)
        return {tp: committed[tp] for tp in partitions if tp in committed}

    # ------------------------------------------------------------------
    # Share-group offsets bookkeeping
    # ------------------------------------------------------------------

    def _share_group(self, group_id: str) -> _Group:
        group = self._groups.get(group_id)
        if group is None:
            raise _refuse(ErrorCode.GROUP_ID_NOT_FOUND, f"Group {group_id} not found.")
        if group.group_type != "share":
            raise _refuse(ErrorCode.GROUP_ID_NOT_FOUND, f"Group {group_id} is not a share group.")
        return group

    def initialized_share_partitions(self, group_id: str) -> frozenset[TopicPartition]:
        """Topic-partitions whose share state was initialized for this group."""
        return self._initialized.get(group_id, frozenset())

    def uninitialized_share_partitions(self, group_id: str) -> frozenset[TopicPartition]:
        """Partitions of the group's subscribed topics that have no share state
        yet: the shell initializes them at the share coordinator, then calls
        ``mark_share_partitions_initialized``."""
        group = self._share_group(group_id)
        wanted = {
            (topic, p) for topic in group.subscribed_topics for p in range(self._topic_partitions.get(topic, 0))
        }
        return frozenset(wanted - self.initialized_share_partitions(group_id))

    def mark_share_partitions_initialized(
        self, group_id: str, partitions: Iterable[TopicPartition]
    ) -> list[GroupRecord]:
        self._share_group(group_id)
        records: list[GroupRecord] = []
        self._set_initialized(group_id, self.initialized_share_partitions(group_id) | set(partitions), records)
        return records

    def check_can_alter_share_offsets(self, group_id: str) -> None:
        """Refuses unless ``group_id`` is a share group with no active members
        (AlterShareGroupOffsets / DeleteShareGroupOffsets precondition)."""
        group = self._share_group(group_id)
        if group.members:
            raise _refuse(
                ErrorCode.GROUP_NOT_EMPTY,
                f"Share group {group_id} has {len(group.members)} active members; offsets can only "
                "be changed while it is empty.",
            )

    def begin_share_offsets_change(self, group_id: str, now_ms: int, hold_ms: int) -> None:
        """Check that the share group is empty and refuse joins until
        :meth:`end_share_offsets_change` (or ``hold_ms``, should the end never come).

        An offsets change writes the share coordinator after this check; a
        member joining in between would start consuming the state being replaced.
        """
        self.check_can_alter_share_offsets(group_id)
        self._offsets_changing[group_id] = now_ms + hold_ms

    def end_share_offsets_change(self, group_id: str) -> None:
        self._offsets_changing.pop(group_id, None)

    def delete_share_group_offsets(
        self, group_id: str, topics: Iterable[str]
    ) -> tuple[list[GroupRecord], frozenset[TopicPartition]]:
        """Forgets the share state of the given topics for an empty share group.
        Returns the records and the partitions whose state the shell deletes."""
        self.check_can_alter_share_offsets(group_id)
        topic_set = set(topics)
        initialized = self.initialized_share_partitions(group_id)
        gone = frozenset(tp for tp in initialized if tp[0] in topic_set)
        records: list[GroupRecord] = []
        self._set_initialized(group_id, initialized - gone, records)
        return records, gone

    def _set_initialized(
        self, group_id: str, partitions: frozenset[TopicPartition] | set[TopicPartition], records: list[GroupRecord]
    ) -> None:
        current = self.initialized_share_partitions(group_id)
        if frozenset(partitions) == current:
            return
        if partitions:
            self._emit(records, ShareGroupPartitionsRecord(group_id, tuple(sorted(partitions))))
        else:
            self._emit(records, ShareGroupPartitionsTombstone(group_id))

    # ------------------------------------------------------------------
    # Metrics hooks
    # ------------------------------------------------------------------

    def group_counts(self) -> dict[tuple[GroupType, GroupState], int]:
        """Groups by (type, state); every combination is present, so gauges
        keep a stable label set. Deleted groups are removed at once, so Dead
        is always 0 here."""
        counts = {(t, s): 0 for t in GROUP_TYPES for s in GROUP_STATES}
        for group in self._groups.values():
            counts[(group.group_type, _state(group))] += 1
        return counts

    def member_counts(self) -> dict[GroupType, int]:
        counts = {t: 0 for t in GROUP_TYPES}
        for group in self._groups.values():
            counts[group.group_type] += len(group.members)
        return counts

    def group_type(self, group_id: str) -> GroupType | None:
        group = self._groups.get(group_id)
        return None if group is None else group.group_type

    def check_invariants(self) -> None:
        """Asserts the shard's internal invariants (used by tests)."""
        for group in self._groups.values():
            assert group.assignment_epoch <= group.group_epoch
            for member in group.members.values():
                assert member.member_epoch <= group.group_epoch
            if group.group_type == "consumer":
                claimed: dict[TopicPartition, str] = {}
                for member in group.members.values():
                    assert not (member.assignment & member.pending_revocation)
                    for tp in member.assignment | member.pending_revocation:
                        assert tp not in claimed, f"{tp} claimed by {claimed.get(tp)} and {member.member_id}"
                        claimed[tp] = member.member_id
                assert claimed == group.claims
            else:
                assert not group.claims


def _state(group: _Group) -> GroupState:
    return "Stable" if group.members else "Empty"


def _check_group_id(group_id: str) -> None:
    if not group_id:
        raise _refuse(ErrorCode.INVALID_GROUP_ID, "The group id must not be empty.")
    if len(group_id) > GROUP_ID_LENGTH_MAX:
        raise _refuse(
            ErrorCode.INVALID_GROUP_ID,
            f"The group id is {len(group_id)} characters long; at most {GROUP_ID_LENGTH_MAX} are allowed.",
        )


def _check_member_id(member_id: str) -> None:
    if not member_id:
        raise _refuse(
            ErrorCode.INVALID_REQUEST,
            "The member id must not be empty: the client generates a UUID and keeps it while it runs.",
        )
    if len(member_id) > MEMBER_ID_LENGTH_MAX:
        raise _refuse(
            ErrorCode.INVALID_REQUEST,
            f"The member id is {len(member_id)} characters long; at most {MEMBER_ID_LENGTH_MAX} are allowed.",
        )


def _check_client_fields(client_id: str, client_host: str) -> None:
    if len(client_id) > CLIENT_FIELD_LENGTH_MAX or len(client_host) > CLIENT_FIELD_LENGTH_MAX:
        raise _refuse(
            ErrorCode.INVALID_REQUEST,
            f"client id and client host are limited to {CLIENT_FIELD_LENGTH_MAX} characters.",
        )


def _check_subscription(subscribed_topics: list[str] | None) -> frozenset[str] | None:
    if subscribed_topics is None:
        return None
    if len(subscribed_topics) > SUBSCRIBED_TOPICS_MAX:
        raise _refuse(
            ErrorCode.INVALID_REQUEST,
            f"A member may subscribe to at most {SUBSCRIBED_TOPICS_MAX} topics, got {len(subscribed_topics)}.",
        )
    for topic in subscribed_topics:
        if not topic or len(topic) > TOPIC_NAME_LENGTH_MAX:
            raise _refuse(
                ErrorCode.INVALID_REQUEST,
                f"Subscribed topic name {topic!r} must be 1 to {TOPIC_NAME_LENGTH_MAX} characters.",
            )
    return frozenset(subscribed_topics)
