"""Server-side partition assignors for share groups and consumer groups.

Rules
-----
* Input: each member's subscribed topics, each topic's partition count, and the
  current assignment. Output: the target assignment, member → set of
  (topic, partition). Pure and deterministic: the same input gives the same
  output (ties are broken by member id and partition, never by hash order).
* A member is only given partitions of topics it subscribes to; a partition is
  never given twice to the same member; topics that do not exist are ignored.
* **Share groups** (``assign_share``, Kafka's ``simple`` assignor, §7): each
  partition of topic t is shared by exactly ``s_t`` members, where ``s_t = 1``
  while t's subscribers do not outnumber its partitions and
  ``s_t = ceil(subscribers / partitions)`` when they do. So every subscriber of
  a topic with partitions receives at least one partition, and members may
  outnumber partitions.
* **Consumer groups** (``assign_consumer``): ``s = 1`` for every partition —
  each partition goes to exactly one member; members beyond the partition count
  receive nothing.
* Balance first, then stickiness (as Kafka's homogeneous builder): when every
  member subscribes to the same topics, member loads differ by at most one.
  Among the balanced assignments, one that keeps as many current
  (member, partition) pairs as the greedy steps below find is chosen; in
  particular when a member joins a balanced group only the partitions the new
  member receives move.

Theory of operation
-------------------
1. *Keep*: every current pair that is still valid (member present and
   subscribed, partition exists), keeping at most ``s_p`` holders per partition
   (the least loaded holders keep it, so an overloaded member gives up first).
2. *Fill*: every partition still short of ``s_p`` holders goes to the least
   loaded eligible members that do not hold it yet.
3. *Balance*: while some member A holds at least two more partitions than some
   member B and holds a partition B may take, that partition moves from A to B
   (the most loaded A and least loaded B are tried first). Each move keeps the
   per-partition holder count and strictly lowers the sum of squared loads, so
   the loop ends; with one common subscription a movable partition always exists
   while loads differ by two, hence the ±1 balance. With different
   subscriptions, a subscriber of topic t left with nothing can always take a
   partition of t from a holder of two or more (t's ``partitions * s_t`` slots
   are at least its subscriber count), hence "everyone with a partition to take
   gets one".
"""

from __future__ import annotations

from collections.abc import Mapping

TopicPartition = tuple[str, int]

#: Moves the balance step may make: each move lowers the sum of squared loads by
#: at least 2 and that sum starts below (members x partitions)^2, so this bound
#: is never reached in practice; it is a guard against an accounting bug.
_BALANCE_MOVES_MAX = 1_000_000


def assign_share(
    members: Mapping[str, set[str]] | Mapping[str, frozenset[str]],
    partitions: Mapping[str, int],
    current: Mapping[str, set[TopicPartition]] | Mapping[str, frozenset[TopicPartition]],
) -> dict[str, set[TopicPartition]]:
    """Target assignment of a share group: partitions may be shared by members."""
    subscribers = _subscribers(members, partitions)
    sharing = {
        topic: max(1, -(-len(subs) // partitions[topic])) for topic, subs in subscribers.items()
    }
    return _assign(members, partitions, current, subscribers, sharing)


def assign_consumer(
    members: Mapping[str, set[str]] | Mapping[str, frozenset[str]],
    partitions: Mapping[str, int],
    current: Mapping[str, set[TopicPartition]] | Mapping[str, frozenset[TopicPartition]],
) -> dict[str, set[TopicPartition]]:
    """Target assignment of a consumer group: each partition to exactly one member."""
    subscribers = _subscribers(members, partitions)
    sharing = {topic: 1 for topic in subscribers}
    return _assign(members, partitions, current, subscribers, sharing)


def _subscribers(
    members: Mapping[str, set[str]] | Mapping[str, frozenset[str]], partitions: Mapping[str, int]
) -> dict[str, list[str]]:
    """Topic → sorted subscribing members, for topics that exist and have partitions."""
    result: dict[str, list[str]] = {}
    for member_id in sorted(members):
        for topic in members[member_id]:
            if partitions.get(topic, 0) > 0:
                result.setdefault(topic, []).append(member_id)
    return result


def _assign(
    members: Mapping[str, set[str]] | Mapping[str, frozenset[str]],
    partitions: Mapping[str, int],
    current: Mapping[str, set[TopicPartition]] | Mapping[str, frozenset[TopicPartition]],
    subscribers: dict[str, list[str]],
    sharing: dict[str, int],
) -> dict[str, set[TopicPartition]]:
    assignment: dict[str, set[TopicPartition]] = {member_id: set() for member_id in members}
    holders: dict[TopicPartition, set[str]] = {}

    def give(member_id: str, tp: TopicPartition) -> None:
        assignment[member_id].add(tp)
        holders.setdefault(tp, set()).add(member_id)

    # 1. Keep valid current pairs. Loads used to pick the keepers are the valid
    # current loads, so that a partition held by too many members stays with
    # the members that hold the fewest.
    valid_current: dict[str, list[TopicPartition]] = {}
    for member_id in sorted(members):
        subscribed = members[member_id]
        valid_current[member_id] = sorted(
            (topic, index)
            for topic, index in current.get(member_id, ())
            if topic in subscribed and 0 <= index < partitions.get(topic, 0)
        )
    current_holders: dict[TopicPartition, list[str]] = {}
    for member_id, owned in valid_current.items():
        for tp in owned:
            current_holders.setdefault(tp, []).append(member_id)
    for tp in sorted(current_holders):
        keepers = sorted(current_holders[tp], key=lambda m: (len(valid_current[m]), m))
        for member_id in keepers[: sharing[tp[0]]]:
            give(member_id, tp)

    # 2. Fill partitions short of holders, least loaded eligible members first.
    for topic in sorted(subscribers):
        eligible = subscribers[topic]
        wanted = sharing[topic]
        assert wanted <= len(eligible), "sharing never exceeds the subscriber count"
        for index in range(partitions[topic]):
            tp = (topic, index)
            have = holders.get(tp, set())
            missing = wanted - len(have)
            if missing <= 0:
                continue
            candidates = sorted(
                (m for m in eligible if m not in have), key=lambda m: (len(assignment[m]), m)
            )
            for member_id in candidates[:missing]:
                give(member_id, tp)

    # 3. Balance by single moves from heavy to light members.
    for _ in range(_BALANCE_MOVES_MAX):
        if not _move_one(members, assignment, holders):
            break
    else:
        raise AssertionError("assignor balance step did not converge")
    return assignment


def _move_one(
    members: Mapping[str, set[str]] | Mapping[str, frozenset[str]],
    assignment: dict[str, set[TopicPartition]],
    holders: dict[TopicPartition, set[str]],
) -> bool:
    """Moves one partition from a member with at least two more to a lighter one."""
    by_load = sorted(assignment, key=lambda m: (len(assignment[m]), m))
    for light in by_load:
        light_load = len(assignment[light])
        for heavy in reversed(by_load):
            if len(assignment[heavy]) - light_load < 2:
                break
            for tp in sorted(assignment[heavy]):
                if tp[0] in members[light] and light not in holders[tp]:
                    assignment[heavy].discard(tp)
                    holders[tp].discard(heavy)
                    assignment[light].add(tp)
                    holders[tp].add(light)
                    return True
    return False
