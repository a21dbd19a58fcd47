"""Records the group coordinator writes to its ``__consumer_offsets`` partition.

Rules
-----
* Every persisted change of a ``GroupCoordinatorShard`` is one of these records;
  replaying them in log order rebuilds the persisted state (group type, group
  epoch, subscribed topics, group configs, initialized share partitions,
  committed offsets). Members and assignments are not persisted (KIP-848 keeps
  them, shoal does not): a coordinator that takes over answers an unknown
  member with UNKNOWN_MEMBER_ID and the member rejoins.
* A record has a key and a value; records with the same key supersede each
  other, so the topic may be compacted by key. A *tombstone* has the key and no
  value (``value is None``) and deletes what the key named.
* ``encode`` is deterministic (sorted collections, fixed field order), so two
  shards with the same persisted state produce byte-identical snapshots.
* Encoding is stdlib JSON: the key is ``[kind, group_id, ...]``, the value a JSON
  array whose first element is the value version. Decoding a key or value that
  shoal did not write is a broken invariant (``AssertionError``): the log is
  only written by this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

GroupType = Literal["share", "consumer"]
GROUP_TYPES: tuple[GroupType, ...] = ("share", "consumer")
TopicPartition = tuple[str, int]

# Key kinds. The numbers are part of the on-disk format: never reuse one.
_KIND_OFFSET_COMMIT = 1
_KIND_GROUP_METADATA = 2
_KIND_GROUP_CONFIG = 3
_KIND_SHARE_PARTITIONS = 4

_VALUE_VERSION = 0


@dataclass(frozen=True)
class GroupMetadataRecord:
    """A group exists with this type, group epoch and union of subscriptions."""

    group_id: str
    group_type: GroupType
    group_epoch: int
    subscribed_topics: tuple[str, ...]


@dataclass(frozen=True)
class GroupMetadataTombstone:
    group_id: str


@dataclass(frozen=True)
class GroupConfigRecord:
    """The complete override set of a group (sorted (name, value) pairs)."""

    group_id: str
    configs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class GroupConfigTombstone:
    group_id: str


@dataclass(frozen=True)
class ShareGroupPartitionsRecord:
    """The topic-partitions whose share state has been initialized for a share
    group (Kafka's ShareGroupStatePartitionMetadata, initialized part)."""

    group_id: str
    initialized_partitions: tuple[TopicPartition, ...]


@dataclass(frozen=True)
class ShareGroupPartitionsTombstone:
    group_id: str


@dataclass(frozen=True)
class OffsetCommitRecord:
    """A consumer group's committed offset for one partition."""

    group_id: str
    topic: str
    partition: int
    offset: int
    metadata: str
    commit_timestamp_ms: int


@dataclass(frozen=True)
class OffsetCommitTombstone:
    group_id: str
    topic: str
    partition: int


GroupRecord = (
    GroupMetadataRecord
    | GroupMetadataTombstone
    | GroupConfigRecord
    | GroupConfigTombstone
    | ShareGroupPartitionsRecord
    | ShareGroupPartitionsTombstone
    | OffsetCommitRecord
    | OffsetCommitTombstone
)


def _dump(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode(record: GroupRecord) -> tuple[bytes, bytes | None]:
    """Record → (key, value); a tombstone's value is None."""
    match record:
        case GroupMetadataRecord(group_id, group_type, group_epoch, topics):
            return _dump([_KIND_GROUP_METADATA, group_id]), _dump(
                [_VALUE_VERSION, group_type, group_epoch, sorted(topics)]
            )
        case GroupMetadataTombstone(group_id):
            return _dump([_KIND_GROUP_METADATA, group_id]), None
        case GroupConfigRecord(group_id, configs):
            return _dump([_KIND_GROUP_CONFIG, group_id]), _dump(
                [_VALUE_VERSION, [list(item) for item in sorted(configs)]]
            )
        case GroupConfigTombstone(group_id):
            return _dump([_KIND_GROUP_CONFIG, group_id]), None
        case ShareGroupPartitionsRecord(group_id, partitions):
            return _dump([_KIND_SHARE_PARTITIONS, group_id]), _dump(
                [_VALUE_VERSION, [list(tp) for tp in sorted(partitions)]]
            )
        case ShareGroupPartitionsTombstone(group_id):
            return _dump([_KIND_SHARE_PARTITIONS, group_id]), None
        case OffsetCommitRecord(group_id, topic, partition, offset, metadata, timestamp_ms):
            return _dump([_KIND_OFFSET_COMMIT, group_id, topic, partition]), _dump(
                [_VALUE_VERSION, offset, metadata, timestamp_ms]
            )
        case OffsetCommitTombstone(group_id, topic, partition):
            return _dump([_KIND_OFFSET_COMMIT, group_id, topic, partition]), None
    raise AssertionError(f"not a group record: {record!r}")


def decode(key: bytes, value: bytes | None) -> GroupRecord:
    """(key, value) → record; the inverse of ``encode``."""
    key_fields = json.loads(key.decode("utf-8"))
    if not (isinstance(key_fields, list) and len(key_fields) >= 2 and isinstance(key_fields[1], str)):
        raise AssertionError(f"malformed group record key {key!r}")
    kind, group_id = key_fields[0], key_fields[1]
    value_fields = None if value is None else json.loads(value.decode("utf-8"))
    if value_fields is not None and not (
        isinstance(value_fields, list) and value_fields and value_fields[0] == _VALUE_VERSION
    ):
        raise AssertionError(f"unknown group record value version in {value!r}")
    if kind == _KIND_GROUP_METADATA:
        if value_fields is None:
            return GroupMetadataTombstone(group_id)
        _, group_type, group_epoch, topics = value_fields
        if group_type not in GROUP_TYPES:
            raise AssertionError(f"unknown group type {group_type!r} in {value!r}")
        return GroupMetadataRecord(group_id, group_type, int(group_epoch), tuple(topics))
    if kind == _KIND_GROUP_CONFIG:
        if value_fields is None:
            return GroupConfigTombstone(group_id)
        return GroupConfigRecord(group_id, tuple((str(n), str(v)) for n, v in value_fields[1]))
    if kind == _KIND_SHARE_PARTITIONS:
        if value_fields is None:
            return ShareGroupPartitionsTombstone(group_id)
        return ShareGroupPartitionsRecord(group_id, tuple((str(t), int(p)) for t, p in value_fields[1]))
    if kind == _KIND_OFFSET_COMMIT:
        if len(key_fields) != 4:
            raise AssertionError(f"malformed offset commit key {key!r}")
        topic, partition = str(key_fields[2]), int(key_fields[3])
        if value_fields is None:
            return OffsetCommitTombstone(group_id, topic, partition)
        _, offset, metadata, timestamp_ms = value_fields
        return OffsetCommitRecord(group_id, topic, partition, int(offset), str(metadata), int(timestamp_ms))
    raise AssertionError(f"unknown group record kind {kind!r} in key {key!r}")
