"""Share-group and consumer-group assignors (coordinator/assignor.py)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.assignor import assign_consumer, assign_share

TOPICS = ["a", "b", "c"]


def holders(assignment):
    counts: Counter = Counter()
    for partitions in assignment.values():
        counts.update(partitions)
    return counts


def loads(assignment):
    return [len(p) for p in assignment.values()]


def sharing(members, partitions, topic):
    subscribers = sum(1 for subs in members.values() if topic in subs)
    return max(1, -(-subscribers // partitions[topic]))


def test_scenario_62_three_members_share_one_partition():
    members = {"m1": {"t"}, "m2": {"t"}, "m3": {"t"}}
    assert assign_share(members, {"t": 1}, {}) == {m: {("t", 0)} for m in members}


def test_scenario_62_two_members_four_partitions_get_two_each_without_sharing():
    result = assign_share({"m1": {"t"}, "m2": {"t"}}, {"t": 4}, {})
    assert loads(result) == [2, 2]
    assert set(holders(result).values()) == {1}


def test_scenario_62_a_join_moves_only_what_the_new_member_gets():
    before = {"m1": {("t", 0), ("t", 1)}, "m2": {("t", 2), ("t", 3)}}
    after = assign_share({"m1": {"t"}, "m2": {"t"}, "m3": {"t"}}, {"t": 4}, before)
    assert len(after["m3"]) == 1
    removed = sum(len(before[m] - after[m]) for m in before)
    assert removed == 1


def test_unknown_topics_and_unsubscribed_partitions_are_ignored():
    result = assign_share({"m1": {"t", "missing"}}, {"t": 2, "other": 3}, {"m1": {("other", 0), ("t", 9)}})
    assert result == {"m1": {("t", 0), ("t", 1)}}


def test_consumer_members_beyond_partitions_get_nothing():
    result = assign_consumer({"m1": {"t"}, "m2": {"t"}, "m3": {"t"}}, {"t": 2}, {})
    assert sorted(loads(result)) == [0, 1, 1]
    assert set(holders(result).values()) == {1}


member_ids = st.lists(st.text("abcdefgh", min_size=1, max_size=3), min_size=1, max_size=12, unique=True)
partition_counts = st.fixed_dictionaries({t: st.integers(0, 8) for t in TOPICS})


@st.composite
def homogeneous(draw):
    members = draw(member_ids)
    topics = draw(st.sets(st.sampled_from(TOPICS), min_size=1))
    return {m: set(topics) for m in members}, draw(partition_counts)


@st.composite
def heterogeneous(draw):
    members = draw(member_ids)
    return {m: draw(st.sets(st.sampled_from(TOPICS))) for m in members}, draw(partition_counts)


@st.composite
def with_current(draw, group):
    members, partitions = draw(group)
    all_partitions = [(t, p) for t in TOPICS for p in range(partitions[t] + 1)]  # includes stale ones
    current = {
        m: set(draw(st.lists(st.sampled_from(all_partitions), max_size=6))) if all_partitions else set()
        for m in members
    }
    return members, partitions, current


def check_valid(members, partitions, result, share: bool):
    assert set(result) == set(members)
    counts = holders(result)
    for member, assigned in result.items():
        for topic, index in assigned:
            assert topic in members[member] and 0 <= index < partitions[topic]
    for topic in TOPICS:
        if partitions[topic] == 0 or not any(topic in s for s in members.values()):
            continue
        wanted = sharing(members, partitions, topic) if share else 1
        for index in range(partitions[topic]):
            assert counts[(topic, index)] == wanted, (topic, index)
    if share:
        for member, subs in members.items():
            if any(partitions[t] > 0 for t in subs):
                assert result[member], f"{member} got nothing"


@settings(max_examples=150, deadline=None)
@given(with_current(homogeneous()))
def test_share_homogeneous_covers_balances_and_gives_everyone_a_partition(case):
    members, partitions, current = case
    result = assign_share(members, partitions, current)
    check_valid(members, partitions, result, share=True)
    assert max(loads(result)) - min(loads(result)) <= 1


@settings(max_examples=150, deadline=None)
@given(with_current(heterogeneous()))
def test_share_heterogeneous_covers_every_subscribed_partition(case):
    members, partitions, current = case
    check_valid(members, partitions, assign_share(members, partitions, current), share=True)


@settings(max_examples=150, deadline=None)
@given(with_current(homogeneous()))
def test_consumer_homogeneous_one_owner_per_partition_and_balanced(case):
    members, partitions, current = case
    result = assign_consumer(members, partitions, current)
    check_valid(members, partitions, result, share=False)
    assert max(loads(result)) - min(loads(result)) <= 1


@settings(max_examples=150, deadline=None)
@given(with_current(heterogeneous()))
def test_consumer_heterogeneous_one_owner_per_partition(case):
    members, partitions, current = case
    check_valid(members, partitions, assign_consumer(members, partitions, current), share=False)


@settings(max_examples=200, deadline=None)
@given(homogeneous(), st.booleans())
def test_assignment_is_stable_when_nothing_changes(case, share):
    members, partitions = case
    assign = assign_share if share else assign_consumer
    first = assign(members, partitions, {})
    assert assign(members, partitions, first) == first


@settings(max_examples=150, deadline=None)
@given(homogeneous(), st.booleans())
def test_a_join_moves_no_more_than_the_new_member_receives(case, share):
    members, partitions = case
    assign = assign_share if share else assign_consumer
    before = assign(members, partitions, {})
    joined = dict(members)
    joined["zz-new"] = next(iter(members.values()))
    after = assign(joined, partitions, before)
    removed = sum(len(before[m] - after[m]) for m in before)
    assert removed <= len(after["zz-new"])
    # Minimal: a balanced result must give the newcomer at least floor(total/M).
    total = sum(len(p) for p in after.values())
    assert len(after["zz-new"]) <= -(-total // len(joined))


@settings(max_examples=100, deadline=None)
@given(homogeneous())
def test_a_leave_only_moves_the_leavers_partitions_when_members_do_not_outnumber_partitions(case):
    members, partitions = case
    total_partitions = sum(partitions[t] for t in next(iter(members.values())))
    if len(members) < 2 or len(members) > total_partitions:
        return
    before = assign_consumer(members, partitions, {})
    leaver = sorted(members)[0]
    remaining = {m: s for m, s in members.items() if m != leaver}
    after = assign_consumer(remaining, partitions, before)
    for member in remaining:
        assert before[member] <= after[member]


def test_result_is_deterministic_regardless_of_input_order():
    members_one = {"x": {"a", "b"}, "y": {"a"}, "z": {"b", "c"}}
    members_two = dict(reversed(list(members_one.items())))
    partitions = {"a": 5, "b": 3, "c": 2}
    assert assign_share(members_one, partitions, {}) == assign_share(members_two, partitions, {})
    assert assign_consumer(members_one, partitions, {}) == assign_consumer(members_two, partitions, {})
