"""Group coordinator shard (coordinator/groups.py) and its records."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coordinator.config import GroupBrokerConfig
from coordinator.errors import ErrorCode, OperatingError
from coordinator.group_records import (
    GroupConfigRecord,
    GroupMetadataRecord,
    GroupMetadataTombstone,
    OffsetCommitRecord,
    OffsetCommitTombstone,
    ShareGroupPartitionsRecord,
    decode,
    encode,
)
from coordinator.groups import GroupCoordinatorShard

BROKER = GroupBrokerConfig.from_mapping(
    {
        "group.share.min.session.timeout.ms": 1000,
        "group.share.session.timeout.ms": 1000,
        "group.share.min.heartbeat.interval.ms": 100,
        "group.share.heartbeat.interval.ms": 100,
        "group.consumer.min.session.timeout.ms": 1000,
        "group.consumer.session.timeout.ms": 1000,
        "group.consumer.min.heartbeat.interval.ms": 100,
        "group.consumer.heartbeat.interval.ms": 100,
        "group.share.max.size": 3,
        "group.consumer.max.size": 3,
        "group.coordinator.max.groups": 4,
    }
)


def new_shard(topics=None) -> GroupCoordinatorShard:
    shard = GroupCoordinatorShard(BROKER)
    shard.set_topic_partitions(topics or {"t": 4, "u": 2}, 0)
    return shard


def refused(code: ErrorCode, call, *args, **kwargs) -> OperatingError:
    with pytest.raises(OperatingError) as info:
        call(*args, **kwargs)
    assert info.value.code == code, info.value
    return info.value


def share_join(shard, group, member, topics=("t",), now_ms=0):
    return shard.share_group_heartbeat(group, member, 0, list(topics), "client", "host", now_ms)


def reload(shard, records) -> GroupCoordinatorShard:
    loaded = GroupCoordinatorShard.load([encode(r) for r in records], BROKER)
    loaded.set_topic_partitions(shard.topic_partitions(), 0)
    return loaded


def persisted(shard):
    return shard.snapshot_records()


# --- records ----------------------------------------------------------------------

def test_records_round_trip_through_bytes():
    records = [
        GroupMetadataRecord("g", "share", 3, ("a", "b")),
        GroupMetadataTombstone("g"),
        GroupConfigRecord("g", (("share.delivery.count.limit", "3"),)),
        ShareGroupPartitionsRecord("g", (("a", 0), ("a", 1))),
        OffsetCommitRecord("g", "a", 1, 42, "meta ü", 7),
        OffsetCommitTombstone("g", "a", 1),
    ]
    for record in records:
        key, value = encode(record)
        assert decode(key, value) == record
    assert encode(GroupMetadataTombstone("g"))[1] is None
    assert encode(GroupMetadataTombstone("g"))[0] == encode(GroupMetadataRecord("g", "share", 1, ()))[0]


# --- share groups -----------------------------------------------------------------

def test_share_join_heartbeat_leave():
    shard = new_shard()
    first, records = share_join(shard, "g", "m1")
    assert first.member_epoch == 1 and first.assignment == {("t", p) for p in range(4)}
    assert first.heartbeat_interval_ms == 100
    assert records == [GroupMetadataRecord("g", "share", 1, ("t",))]
    second, _ = share_join(shard, "g", "m2")
    assert second.member_epoch == 2 and len(second.assignment) == 2
    # m1 adopts the new epoch and its reduced assignment on its next heartbeat.
    again, records = shard.share_group_heartbeat("g", "m1", 1, None, "client", "host", 10)
    assert records == []
    assert again.member_epoch == 2 and again.assignment == first.assignment - second.assignment
    left, records = shard.share_group_heartbeat("g", "m2", -1, None, "client", "host", 20)
    assert left.member_epoch == -1 and records[-1].group_epoch == 3
    # Leaving again is harmless.
    assert shard.share_group_heartbeat("g", "m2", -1, None, "client", "host", 20)[1] == []
    description = shard.describe_share_group("g")
    assert (description.state, description.group_epoch, description.assignment_epoch) == ("Stable", 3, 3)
    assert [m.member_id for m in description.members] == ["m1"]
    assert description.members[0].client_id == "client" and description.members[0].client_host == "host"


def test_share_members_may_outnumber_partitions():
    shard = new_shard({"t": 1})
    for member in ("m1", "m2", "m3"):
        share_join(shard, "g", member)
    for member in ("m1", "m2", "m3"):
        epoch = shard.describe_share_group("g").group_epoch
        result, _ = shard.share_group_heartbeat("g", member, _epoch_of(shard, "g", member), None, "", "", 1)
        assert result.assignment == {("t", 0)} and result.member_epoch == epoch


def _epoch_of(shard, group, member):
    return next(m.member_epoch for m in shard.describe_share_group(group).members if m.member_id == member)


def test_share_heartbeat_refusals_leave_state_unchanged():
    shard = new_shard()
    share_join(shard, "g", "m1")
    before = (persisted(shard), shard.describe_share_group("g"))
    refused(ErrorCode.INVALID_REQUEST, share_join, shard, "g", "")
    refused(ErrorCode.INVALID_GROUP_ID, share_join, shard, "", "m9")
    refused(ErrorCode.INVALID_REQUEST, shard.share_group_heartbeat, "g", "m9", 0, None, "", "", 0)
    refused(ErrorCode.UNKNOWN_MEMBER_ID, shard.share_group_heartbeat, "g", "m9", 1, None, "", "", 0)
    refused(ErrorCode.UNKNOWN_MEMBER_ID, shard.share_group_heartbeat, "nope", "m9", 1, None, "", "", 0)
    refused(ErrorCode.FENCED_MEMBER_EPOCH, shard.share_group_heartbeat, "g", "m1", 7, ["u"], "", "", 0)
    refused(ErrorCode.INVALID_REQUEST, shard.share_group_heartbeat, "g", "m1", -2, None, "", "", 0)
    refused(ErrorCode.INVALID_REQUEST, share_join, shard, "g", "m9", ("",))
    share_join(shard, "g", "m2")
    share_join(shard, "g", "m3")
    before = (persisted(shard), shard.describe_share_group("g"))
    error = refused(ErrorCode.GROUP_MAX_SIZE_REACHED, share_join, shard, "g", "m4")
    assert "group.share.max.size" in error.message
    assert (persisted(shard), shard.describe_share_group("g")) == before


def test_subscription_change_bumps_epoch_and_follows_topics():
    shard = new_shard()
    share_join(shard, "g", "m1")
    result, records = shard.share_group_heartbeat("g", "m1", 1, ["t", "u"], "", "", 5)
    assert result.member_epoch == 2 and len(result.assignment) == 6
    assert records == [GroupMetadataRecord("g", "share", 2, ("t", "u"))]
    # The same subscription again changes nothing.
    assert shard.share_group_heartbeat("g", "m1", 2, ["u", "t"], "", "", 6)[1] == []


def test_rejoin_with_epoch_zero_keeps_the_place():
    shard = new_shard()
    first, _ = share_join(shard, "g", "m1")
    again, records = share_join(shard, "g", "m1")
    assert records == [] and again.assignment == first.assignment and again.member_epoch == 1


def test_one_namespace_for_share_and_consumer_groups():
    shard = new_shard()
    share_join(shard, "shared", "m1")
    shard.consumer_group_heartbeat("classic", "c1", 0, ["t"], None, 0)
    error = refused(ErrorCode.GROUP_ID_NOT_FOUND, share_join, shard, "classic", "m1")
    assert error.message == "Group classic is not a share group."
    error = refused(ErrorCode.INCONSISTENT_GROUP_PROTOCOL, shard.consumer_group_heartbeat, "shared", "c", 0, ["t"], None, 0)
    assert error.message == "Group shared is a share group; it cannot be used as a consumer group."
    refused(ErrorCode.INCONSISTENT_GROUP_PROTOCOL, shard.commit_offsets, "shared", "", -1, {("t", 0): (1, "")}, 0)
    refused(ErrorCode.GROUP_ID_NOT_FOUND, shard.describe_share_group, "classic")
    refused(ErrorCode.GROUP_ID_NOT_FOUND, shard.describe_consumer_group, "shared")
    refused(ErrorCode.GROUP_ID_NOT_FOUND, shard.fetch_offsets, "shared")
    refused(ErrorCode.GROUP_ID_NOT_FOUND, shard.check_can_alter_share_offsets, "classic")
    refused(ErrorCode.GROUP_ID_NOT_FOUND, shard.describe_share_group, "missing")
    assert [(g.group_id, g.group_type) for g in shard.list_groups()] == [("classic", "consumer"), ("shared", "share")]
    assert [g.group_id for g in shard.list_groups(types=["share"])] == ["shared"]
    assert shard.list_groups(states=["empty"]) == []


def test_group_limit_per_shard():
    shard = new_shard()
    for index in range(4):
        share_join(shard, f"g{index}", "m")
    error = refused(ErrorCode.GROUP_MAX_SIZE_REACHED, share_join, shard, "g4", "m")
    assert "group.coordinator.max.groups" in error.message
    refused(ErrorCode.GROUP_MAX_SIZE_REACHED, shard.commit_offsets, "g5", "", -1, {("t", 0): (1, "")}, 0)


# --- topic metadata ---------------------------------------------------------------

def test_topic_changes_bump_epochs_and_delete_offsets_and_share_state():
    shard = new_shard({"t": 2})
    result, _ = share_join(shard, "s", "m1", ("t", "later"))
    assert result.assignment == {("t", 0), ("t", 1)}
    shard.commit_offsets("c", "", -1, {("t", 0): (5, ""), ("t", 1): (6, "")}, 0)
    shard.mark_share_partitions_initialized("s", {("t", 0), ("t", 1)})
    records, deleted = shard.set_topic_partitions({"t": 2, "later": 1}, 10)
    assert records == [GroupMetadataRecord("s", "share", 2, ("later", "t"))] and deleted == []
    result, _ = shard.share_group_heartbeat("s", "m1", 1, None, "", "", 11)
    assert result.member_epoch == 2 and ("later", 0) in result.assignment
    assert shard.uninitialized_share_partitions("s") == {("later", 0)}
    records, deleted = shard.set_topic_partitions({"later": 1}, 20)
    assert deleted == [("s", "t", 0), ("s", "t", 1)]
    assert OffsetCommitTombstone("c", "t", 0) in records and OffsetCommitTombstone("c", "t", 1) in records
    assert shard.fetch_offsets("c") == {}
    assert shard.initialized_share_partitions("s") == frozenset()
    # Unrelated changes touch no group.
    assert shard.set_topic_partitions({"later": 1, "x": 3}, 30) == ([], [])


# --- liveness ------------------------------------------------------------------------

def test_members_expire_after_the_session_timeout():
    shard = new_shard()
    assert shard.next_deadline_ms() is None
    share_join(shard, "g", "m1", now_ms=0)
    share_join(shard, "g", "m2", now_ms=100)
    assert shard.next_deadline_ms() == 1000
    shard.share_group_heartbeat("g", "m1", 1, None, "", "", 500)
    assert shard.next_deadline_ms() == 1100
    assert shard.expire(1099) == ([], [])
    removed, records = shard.expire(1100)
    assert removed == [("g", "m2")] and records[-1].group_epoch == 3
    removed, _ = shard.expire(5000)
    assert removed == [("g", "m1")]
    assert shard.describe_share_group("g").state == "Empty"
    assert shard.next_deadline_ms() is None


def test_deadline_heap_stays_bounded_by_live_members():
    shard = new_shard()
    share_join(shard, "g", "m1")
    for now_ms in range(1, 5000):
        shard.share_group_heartbeat("g", "m1", 1, None, "", "", now_ms)
    assert len(shard._deadlines) <= 2 * 1 + 1024 + 1


# --- consumer groups --------------------------------------------------------------

def test_consumer_partition_moves_only_after_the_old_owner_releases_it():
    shard = new_shard({"t": 2})
    a, _ = shard.consumer_group_heartbeat("c", "A", 0, ["t"], None, 0)
    assert a.assignment == {("t", 0), ("t", 1)} and a.member_epoch == 1
    b, _ = shard.consumer_group_heartbeat("c", "B", 0, ["t"], None, 1)
    assert b.assignment == frozenset() and b.member_epoch == 2
    target_b = shard.describe_consumer_group("c").members[1].target_assignment
    assert len(target_b) == 1
    # A is told to revoke; its epoch stays until it confirms.
    a, _ = shard.consumer_group_heartbeat("c", "A", 1, None, a.assignment, 2)
    assert a.member_epoch == 1 and a.assignment == {("t", 0), ("t", 1)} - target_b
    # B still cannot have it: A has not reported the release.
    b, _ = shard.consumer_group_heartbeat("c", "B", 2, None, frozenset(), 3)
    assert b.assignment == frozenset()
    a, _ = shard.consumer_group_heartbeat("c", "A", 1, None, a.assignment, 4)
    assert a.member_epoch == 2
    b, _ = shard.consumer_group_heartbeat("c", "B", 2, None, frozenset(), 5)
    assert b.assignment == target_b
    shard.check_invariants()


def test_consumer_previous_epoch_is_accepted_after_a_lost_response():
    shard = new_shard({"t": 2})
    shard.consumer_group_heartbeat("c", "A", 0, ["t"], None, 0)
    first, _ = shard.consumer_group_heartbeat("c", "A", 1, ["t", "u"], None, 1)
    assert first.member_epoch == 2
    again, _ = shard.consumer_group_heartbeat("c", "A", 1, None, {("t", 0)}, 2)
    assert again.member_epoch == 2
    refused(ErrorCode.FENCED_MEMBER_EPOCH, shard.consumer_group_heartbeat, "c", "A", 1, None, None, 3)
    refused(ErrorCode.FENCED_MEMBER_EPOCH, shard.consumer_group_heartbeat, "c", "A", 3, None, None, 3)


def test_offset_commits_check_member_and_epoch():
    shard = new_shard()
    shard.consumer_group_heartbeat("c", "A", 0, ["t"], None, 0)
    before = persisted(shard)
    refused(ErrorCode.UNKNOWN_MEMBER_ID, shard.commit_offsets, "c", "B", 1, {("t", 0): (1, "")}, 0)
    refused(ErrorCode.STALE_MEMBER_EPOCH, shard.commit_offsets, "c", "A", 7, {("t", 0): (1, "")}, 0)
    refused(ErrorCode.UNKNOWN_MEMBER_ID, shard.commit_offsets, "c", "", -1, {("t", 0): (1, "")}, 0)
    refused(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, shard.commit_offsets, "c", "A", 1, {("t", 9): (1, "")}, 0)
    refused(ErrorCode.INVALID_REQUEST, shard.commit_offsets, "c", "A", 1, {("t", 0): (-5, "")}, 0)
    refused(ErrorCode.INVALID_COMMIT_OFFSET_SIZE, shard.commit_offsets, "c", "A", 1, {("t", 0): (1, "x" * 5000)}, 0)
    # All or nothing: one bad partition refuses the whole commit.
    refused(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, shard.commit_offsets, "c", "A", 1,
            {("t", 0): (1, ""), ("zz", 0): (1, "")}, 0)
    assert persisted(shard) == before
    records = shard.commit_offsets("c", "A", 1, {("t", 0): (10, "m"), ("t", 1): (11, "")}, 77)
    assert records == [OffsetCommitRecord("c", "t", 0, 10, "m", 77), OffsetCommitRecord("c", "t", 1, 11, "", 77)]
    assert shard.fetch_offsets("c", [("t", 0), ("t", 3)])[("t", 0)].offset == 10
    assert ("t", 3) not in shard.fetch_offsets("c", [("t", 3)])
    assert shard.fetch_offsets("unknown") == {}


def test_generation_less_commit_creates_an_empty_consumer_group():
    shard = new_shard()
    records = shard.commit_offsets("admin", "", -1, {("u", 1): (3, "")}, 5)
    assert records[0] == GroupMetadataRecord("admin", "consumer", 0, ())
    assert [(g.group_id, g.state) for g in shard.list_groups()] == [("admin", "Empty")]
    joined, _ = shard.consumer_group_heartbeat("admin", "A", 0, ["u"], None, 6)
    assert joined.member_epoch == 1


# --- delete, configs, share offsets ------------------------------------------------

def test_delete_group():
    shard = new_shard()
    share_join(shard, "s", "m1")
    shard.alter_group_configs("s", {"share.delivery.count.limit": "3"})
    shard.mark_share_partitions_initialized("s", {("t", 0)})
    refused(ErrorCode.GROUP_NOT_EMPTY, shard.delete_group, "s")
    shard.share_group_heartbeat("s", "m1", -1, None, "", "", 1)
    records, share_partitions = shard.delete_group("s")
    assert share_partitions == {("t", 0)}
    assert records[-1] == GroupMetadataTombstone("s")
    assert all(encode(r)[1] is None for r in records)
    assert shard.describe_group_configs("s") == {} and shard.list_groups() == []
    refused(ErrorCode.GROUP_ID_NOT_FOUND, shard.delete_group, "s")
    shard.commit_offsets("c", "", -1, {("t", 0): (1, "")}, 0)
    records, share_partitions = shard.delete_group("c")
    assert OffsetCommitTombstone("c", "t", 0) in records and share_partitions == frozenset()


def test_group_configs_apply_and_may_exist_without_a_group():
    shard = new_shard()
    records = shard.alter_group_configs("later", {"share.heartbeat.interval.ms": "200"})
    assert records == [GroupConfigRecord("later", (("share.heartbeat.interval.ms", "200"),))]
    assert shard.list_groups() == [] and shard.describe_group_configs("later") == {"share.heartbeat.interval.ms": "200"}
    result, _ = share_join(shard, "later", "m1")
    assert result.heartbeat_interval_ms == 200
    assert shard.share_settings("later").heartbeat_interval_ms == 200
    refused(ErrorCode.INVALID_CONFIG, shard.alter_group_configs, "later", {"share.heartbeat.interval.ms": "5000"})
    refused(ErrorCode.INVALID_CONFIG, shard.alter_group_configs, "later", {"bogus": "1"})
    assert shard.alter_group_configs("later", {"share.heartbeat.interval.ms": "200"}) == []
    records = shard.alter_group_configs("later", {"share.heartbeat.interval.ms": None})
    assert encode(records[0])[1] is None and shard.describe_group_configs("later") == {}


def test_share_offsets_bookkeeping():
    shard = new_shard()
    share_join(shard, "s", "m1", ("t",))
    assert shard.uninitialized_share_partitions("s") == {("t", p) for p in range(4)}
    records = shard.mark_share_partitions_initialized("s", {("t", 0), ("t", 1)})
    assert records == [ShareGroupPartitionsRecord("s", (("t", 0), ("t", 1)))]
    assert shard.mark_share_partitions_initialized("s", {("t", 0)}) == []
    refused(ErrorCode.GROUP_NOT_EMPTY, shard.check_can_alter_share_offsets, "s")
    refused(ErrorCode.GROUP_ID_NOT_FOUND, shard.check_can_alter_share_offsets, "missing")
    shard.share_group_heartbeat("s", "m1", -1, None, "", "", 1)
    shard.check_can_alter_share_offsets("s")
    records, gone = shard.delete_share_group_offsets("s", ["t"])
    assert gone == {("t", 0), ("t", 1)} and shard.initialized_share_partitions("s") == frozenset()


def test_joins_wait_while_share_offsets_change():
    shard = new_shard()
    share_join(shard, "s", "m1", now_ms=0)
    refused(ErrorCode.GROUP_NOT_EMPTY, shard.begin_share_offsets_change, "s", 10, 1000)
    shard.share_group_heartbeat("s", "m1", -1, None, "", "", 10)
    shard.begin_share_offsets_change("s", 10, 1000)
    # A member joining between the emptiness check and the new state would consume the old one.
    error = refused(ErrorCode.REBALANCE_IN_PROGRESS, share_join, shard, "s", "m2", now_ms=20)
    assert "being reset" in error.message
    share_join(shard, "other", "m9", now_ms=20)  # other groups are not held
    shard.end_share_offsets_change("s")
    assert share_join(shard, "s", "m2", now_ms=30)[0].member_epoch > 0
    # A change that never ends holds joins for hold_ms at most.
    shard.share_group_heartbeat("s", "m2", -1, None, "", "", 40)
    shard.begin_share_offsets_change("s", 40, 1000)
    refused(ErrorCode.REBALANCE_IN_PROGRESS, share_join, shard, "s", "m3", now_ms=1039)
    assert share_join(shard, "s", "m3", now_ms=1040)[0].member_epoch > 0


# --- failover and metrics ---------------------------------------------------------

def test_a_new_coordinator_rebuilds_from_records_and_members_rejoin():
    shard = new_shard()
    log = []
    log += share_join(shard, "s", "m1")[1]
    log += share_join(shard, "s", "m2")[1]
    log += shard.consumer_group_heartbeat("c", "A", 0, ["t"], None, 0)[1]
    log += shard.commit_offsets("c", "A", 1, {("t", 0): (9, "")}, 3)
    log += shard.alter_group_configs("s", {"share.delivery.count.limit": "4"})
    loaded = reload(shard, log)
    assert persisted(loaded) == persisted(shard)
    refused(ErrorCode.UNKNOWN_MEMBER_ID, loaded.share_group_heartbeat, "s", "m1", 2, None, "", "", 10)
    rejoined, _ = share_join(loaded, "s", "m1", now_ms=10)
    assert rejoined.member_epoch == 3 and len(rejoined.assignment) == 4
    assert loaded.fetch_offsets("c")[("t", 0)].offset == 9
    assert loaded.share_settings("s").delivery_count_limit == 4
    assert loaded.describe_share_group("s").state == "Stable"


def test_metrics_hooks():
    shard = new_shard()
    share_join(shard, "s", "m1")
    share_join(shard, "s", "m2")
    shard.consumer_group_heartbeat("c", "A", 0, ["t"], None, 0)
    shard.commit_offsets("e", "", -1, {("t", 0): (1, "")}, 0)
    counts = shard.group_counts()
    assert counts[("share", "Stable")] == 1 and counts[("consumer", "Stable")] == 1
    assert counts[("consumer", "Empty")] == 1 and counts[("share", "Dead")] == 0
    assert shard.member_counts() == {"share": 2, "consumer": 1}
    assert shard.rebalance_counts == {"share": 2, "consumer": 1}


# --- stateful model: replay reproduces state; no partition with two owners --------

GROUPS = ["s1", "s2", "c1", "c2"]
MEMBERS = ["m1", "m2", "m3", "m4"]


class ShardMachine(RuleBasedStateMachine):
    """Random operations against one shard with simulated clients.

    Invariants: replaying every record returned so far rebuilds exactly the
    persisted state; the shard's own invariants hold; no partition is owned
    by two consumer-group clients at once (client view: the assignment each
    client last received, dropped when it is fenced or expired).
    """

    def __init__(self) -> None:
        super().__init__()
        self.shard = new_shard({"t": 3, "u": 1})
        self.log: list = []
        self.now_ms = 0
        # (group, member) -> (epoch, owned) as the client believes.
        self.clients: dict[tuple[str, str], tuple[int, frozenset]] = {}

    def _record(self, records):
        self.log.extend(records)

    def _call(self, call, *args):
        try:
            result, records = call(*args)
        except OperatingError:
            return None
        self._record(records)
        return result

    @rule(group=st.sampled_from(GROUPS), member=st.sampled_from(MEMBERS),
          topics=st.sets(st.sampled_from(["t", "u", "v"])), change=st.booleans())
    def heartbeat(self, group, member, topics, change):
        epoch, owned = self.clients.get((group, member), (0, frozenset()))
        subscription = sorted(topics) if epoch == 0 or change else None
        if group.startswith("s"):
            try:
                result, records = self.shard.share_group_heartbeat(
                    group, member, epoch, subscription, "cid", "host", self.now_ms
                )
            except OperatingError as error:
                assert error.code in (ErrorCode.GROUP_MAX_SIZE_REACHED, ErrorCode.GROUP_ID_NOT_FOUND), error
                return
        else:
            try:
                result, records = self.shard.consumer_group_heartbeat(
                    group, member, epoch, subscription, owned, self.now_ms
                )
            except OperatingError as error:
                assert error.code in (
                    ErrorCode.GROUP_MAX_SIZE_REACHED, ErrorCode.UNKNOWN_MEMBER_ID,
                    ErrorCode.INCONSISTENT_GROUP_PROTOCOL,
                ), error
                if error.code == ErrorCode.UNKNOWN_MEMBER_ID:
                    self.clients.pop((group, member), None)
                return
        self._record(records)
        self.clients[(group, member)] = (result.member_epoch, result.assignment)

    @rule(group=st.sampled_from(GROUPS), member=st.sampled_from(MEMBERS))
    def leave(self, group, member):
        call = self.shard.share_group_heartbeat if group.startswith("s") else None
        if call is not None:
            self._call(call, group, member, -1, None, "", "", self.now_ms)
        else:
            self._call(self.shard.consumer_group_heartbeat, group, member, -1, None, None, self.now_ms)
        self.clients.pop((group, member), None)

    @rule(advance_ms=st.integers(0, 1500))
    def advance_clock(self, advance_ms):
        self.now_ms += advance_ms
        removed, records = self.shard.expire(self.now_ms)
        self._record(records)
        for key in removed:
            self.clients.pop(key, None)
        deadline = self.shard.next_deadline_ms()
        assert deadline is None or deadline > self.now_ms

    @rule(t=st.integers(0, 4), u=st.integers(0, 3))
    def topics_change(self, t, u):
        records, _ = self.shard.set_topic_partitions({"t": t, "u": u, "v": 2}, self.now_ms)
        self._record(records)

    @rule(group=st.sampled_from(GROUPS), member=st.sampled_from(MEMBERS), offset=st.integers(0, 100))
    def commit(self, group, member, offset):
        epoch, _ = self.clients.get((group, member), (-1, frozenset()))
        try:
            self._record(self.shard.commit_offsets(group, member, epoch, {("v", 0): (offset, "m")}, self.now_ms))
        except OperatingError:
            pass

    @rule(group=st.sampled_from(GROUPS), limit=st.sampled_from(["3", "4", None]))
    def alter_configs(self, group, limit):
        self._record(self.shard.alter_group_configs(group, {"share.delivery.count.limit": limit}))

    @rule(group=st.sampled_from(GROUPS), partition=st.integers(0, 3))
    def initialize_share_partition(self, group, partition):
        try:
            self._record(self.shard.mark_share_partitions_initialized(group, {("t", partition)}))
        except OperatingError:
            pass

    @rule(group=st.sampled_from(GROUPS))
    def delete(self, group):
        try:
            records, _ = self.shard.delete_group(group)
        except OperatingError:
            return
        self._record(records)

    @invariant()
    def shard_invariants_hold(self):
        self.shard.check_invariants()

    @invariant()
    def replay_reproduces_persisted_state(self):
        loaded = GroupCoordinatorShard.load([encode(r) for r in self.log], BROKER)
        assert loaded.snapshot_records() == self.shard.snapshot_records()

    @invariant()
    def no_partition_has_two_consumer_owners(self):
        for group in ("c1", "c2"):
            seen: dict = {}
            for (client_group, member), (_, owned) in self.clients.items():
                if client_group != group:
                    continue
                for tp in owned:
                    assert tp not in seen, f"{tp} owned by {seen[tp]} and {member}"
                    seen[tp] = member

    @precondition(lambda self: len(self.log) > 0)
    @rule()
    def compacted_log_rebuilds_the_same_state(self):
        # Keep only the last record per key, as a compacted partition would.
        latest: dict[bytes, tuple[int, bytes | None]] = {}
        for index, record in enumerate(self.log):
            key, value = encode(record)
            latest[key] = (index, value)
        compacted = sorted((index, key, value) for key, (index, value) in latest.items())
        loaded = GroupCoordinatorShard.load([(k, v) for _, k, v in compacted], BROKER)
        assert loaded.snapshot_records() == self.shard.snapshot_records()


ShardMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
TestShardMachine = ShardMachine.TestCase
