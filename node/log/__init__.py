"""The partition log on disk: segments of record batches, indexes, checkpoints.

See ``partition_log.py`` for the rules and the theory of operation.
"""

from node.log.config import LogConfig
from node.log.errors import (
    DuplicateSequenceError,
    FencedLeaderEpochError,
    InvalidProducerEpochError,
    KafkaStorageError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    UnexpectedAppendOffsetError,
)
from node.log.leader_epoch import UNDEFINED_EPOCH, UNDEFINED_OFFSET, EpochEntry
from node.log.partition_log import AppendInfo, PartitionLog

__all__ = [
    "AppendInfo",
    "DuplicateSequenceError",
    "EpochEntry",
    "FencedLeaderEpochError",
    "InvalidProducerEpochError",
    "KafkaStorageError",
    "LogConfig",
    "OffsetOutOfRangeError",
    "OutOfOrderSequenceError",
    "PartitionLog",
    "UNDEFINED_EPOCH",
    "UNDEFINED_OFFSET",
    "UnexpectedAppendOffsetError",
]
