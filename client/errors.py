"""Typed client errors, one class per Kafka error code.

Every error a shoal client raises is a :class:`ShoalError` carrying

* ``code`` — the number of Kafka's error code (the same value as the
  ``ErrorCode`` enum of ``proto/shoal.proto``), so people can look it up;
* ``message`` — what went wrong, in words a person can act on;
* ``retriable`` — whether repeating the same call (usually after refreshing
  metadata or backing off) may succeed.

Class names follow Kafka's exception names written the Python way
(``NotLeaderOrFollowerException`` → :class:`NotLeaderOrFollowerError`).
A few errors exist only inside the client (an illegal call sequence, a record
that cannot be deserialized, a wakeup); they reuse the Kafka code closest to
their meaning so that ``code`` is always meaningful:

=============================  =====================  =========================
client-only error              code                   why that code
=============================  =====================  =========================
``ConfigError``                INVALID_CONFIG (40)    a bad client config
``IllegalStateError``          INVALID_REQUEST (42)   the call is not valid now
``RecordDeserializationError`` INVALID_RECORD (87)    the record cannot be read
``CorruptRecordError``         CORRUPT_MESSAGE (2)    Kafka's own mapping
``KafkaTimeoutError``          REQUEST_TIMED_OUT (7)  a client-side deadline
``WakeupError``                NONE (0)               not a failure: interrupted
=============================  =====================  =========================

Errors coming over gRPC are mapped by :func:`error_from_rpc`: the node puts the
ErrorCode *name* in the trailing metadata key ``shoal-error-code``; without it
the gRPC status decides (UNAVAILABLE → :class:`BrokerNotAvailableError`, a
deadline → :class:`RequestTimedOutError`).
"""

from __future__ import annotations

from typing import Any

import grpc

from proto import shoal_pb2

ERROR_CODE_METADATA_KEY = "shoal-error-code"

#: Codes for which retrying the same call may succeed (Kafka's RetriableException subclasses).
RETRIABLE_CODES: frozenset[int] = frozenset(
    {
        5,  # LEADER_NOT_AVAILABLE
        6,  # NOT_LEADER_OR_FOLLOWER
        7,  # REQUEST_TIMED_OUT
        8,  # BROKER_NOT_AVAILABLE
        9,  # REPLICA_NOT_AVAILABLE
        14,  # COORDINATOR_LOAD_IN_PROGRESS
        15,  # COORDINATOR_NOT_AVAILABLE
        16,  # NOT_COORDINATOR
        19,  # NOT_ENOUGH_REPLICAS
        20,  # NOT_ENOUGH_REPLICAS_AFTER_APPEND
        41,  # NOT_CONTROLLER
        56,  # KAFKA_STORAGE_ERROR
        74,  # FENCED_LEADER_EPOCH
        75,  # UNKNOWN_LEADER_EPOCH
        78,  # OFFSET_NOT_AVAILABLE
        3,  # UNKNOWN_TOPIC_OR_PARTITION (metadata may still be propagating)
        2,  # CORRUPT_MESSAGE (Kafka treats a corrupt transfer as retriable)
        27,  # REBALANCE_IN_PROGRESS
    }
)


def code_name(code: int) -> str:
    """The Kafka name of an error code number, e.g. 6 → ``NOT_LEADER_OR_FOLLOWER``."""
    try:
        return shoal_pb2.ErrorCode.Name(code)
    except ValueError:
        return f"UNKNOWN_ERROR_CODE_{code}"


class ShoalError(Exception):
    """Base class of every error a shoal client raises."""

    #: The Kafka error code number (proto ``ErrorCode``); subclasses set it.
    code: int = -1

    def __init__(self, message: str = "", *, code: int | None = None, retriable: bool | None = None) -> None:
        if code is not None:
            self.code = code
        self.message = message or code_name(self.code)
        self._retriable = retriable
        super().__init__(f"{code_name(self.code)}: {self.message}")

    @property
    def retriable(self) -> bool:
        if self._retriable is not None:
            return self._retriable
        return self.code in RETRIABLE_CODES

    @property
    def name(self) -> str:
        """The Kafka error name (``NOT_LEADER_OR_FOLLOWER``)."""
        return code_name(self.code)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (used by the CLI's ``--output json``)."""
        return {"error": self.name, "code": self.code, "message": self.message, "retriable": self.retriable}


# --------------------------------------------------------------- server codes
# One class per proto ErrorCode, in the order of proto/shoal.proto.


class UnknownServerError(ShoalError):
    code = -1


class OffsetOutOfRangeError(ShoalError):
    code = 1


class CorruptRecordError(ShoalError):
    """A record batch failed its CRC check (Kafka: CorruptRecordException)."""

    code = 2


class UnknownTopicOrPartitionError(ShoalError):
    code = 3


class InvalidFetchSizeError(ShoalError):
    code = 4


class LeaderNotAvailableError(ShoalError):
    code = 5


class NotLeaderOrFollowerError(ShoalError):
    code = 6


class RequestTimedOutError(ShoalError):
    code = 7


class BrokerNotAvailableError(ShoalError):
    code = 8


class ReplicaNotAvailableError(ShoalError):
    code = 9


class MessageTooLargeError(ShoalError):
    code = 10


class CoordinatorLoadInProgressError(ShoalError):
    code = 14


class CoordinatorNotAvailableError(ShoalError):
    code = 15


class NotCoordinatorError(ShoalError):
    code = 16


class InvalidTopicError(ShoalError):
    code = 17


class RecordListTooLargeError(ShoalError):
    code = 18


class NotEnoughReplicasError(ShoalError):
    code = 19


class NotEnoughReplicasAfterAppendError(ShoalError):
    code = 20


class InvalidRequiredAcksError(ShoalError):
    code = 21


class IllegalGenerationError(ShoalError):
    code = 22


class InconsistentGroupProtocolError(ShoalError):
    code = 23


class InvalidGroupIdError(ShoalError):
    code = 24


class UnknownMemberIdError(ShoalError):
    code = 25


class InvalidSessionTimeoutError(ShoalError):
    code = 26


class RebalanceInProgressError(ShoalError):
    code = 27


class InvalidCommitOffsetSizeError(ShoalError):
    code = 28


class InvalidTimestampError(ShoalError):
    code = 32


class UnsupportedVersionError(ShoalError):
    code = 35


class TopicAlreadyExistsError(ShoalError):
    code = 36


class InvalidPartitionsError(ShoalError):
    code = 37


class InvalidReplicationFactorError(ShoalError):
    code = 38


class InvalidReplicaAssignmentError(ShoalError):
    code = 39


class InvalidConfigError(ShoalError):
    """A topic or group config the broker refuses (INVALID_CONFIG)."""

    code = 40


class NotControllerError(ShoalError):
    code = 41


class InvalidRequestError(ShoalError):
    code = 42


class PolicyViolationError(ShoalError):
    code = 44


class OutOfOrderSequenceNumberError(ShoalError):
    code = 45


class DuplicateSequenceNumberError(ShoalError):
    code = 46


class InvalidProducerEpochError(ShoalError):
    code = 47


class KafkaStorageError(ShoalError):
    code = 56


class UnknownProducerIdError(ShoalError):
    code = 59


class GroupNotEmptyError(ShoalError):
    code = 68


class GroupIdNotFoundError(ShoalError):
    code = 69


class FencedLeaderEpochError(ShoalError):
    code = 74


class UnknownLeaderEpochError(ShoalError):
    code = 75


class OffsetNotAvailableError(ShoalError):
    code = 78


class GroupMaxSizeReachedError(ShoalError):
    code = 81


class InvalidRecordError(ShoalError):
    code = 87


class UnknownTopicIdError(ShoalError):
    code = 100


class FencedMemberEpochError(ShoalError):
    code = 110


class StaleMemberEpochError(ShoalError):
    code = 113


class InvalidRecordStateError(ShoalError):
    code = 121


class ShareSessionNotFoundError(ShoalError):
    code = 122


class InvalidShareSessionEpochError(ShoalError):
    code = 123


class FencedStateEpochError(ShoalError):
    code = 124


class ShareSessionLimitReachedError(ShoalError):
    code = 133


# --------------------------------------------------------------- client-only


class ConfigError(InvalidConfigError):
    """A client config that is unknown, refused for this client, or out of range."""


class IllegalStateError(ShoalError):
    """The call is not valid in the client's current state (Kafka: IllegalStateException)."""

    code = 42

    @property
    def retriable(self) -> bool:
        return False


class RecordDeserializationError(ShoalError):
    """A record's key or value could not be deserialized.

    ``topic``, ``partition`` and ``offset`` say which record; a share consumer
    has already released it (it will be delivered again, counting an attempt).
    """

    code = 87

    def __init__(self, message: str, *, topic: str, partition: int, offset: int, cause: BaseException | None = None) -> None:
        super().__init__(message, retriable=False)
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.__cause__ = cause


class KafkaTimeoutError(RequestTimedOutError):
    """A client-side deadline passed before the operation completed."""


class WakeupError(ShoalError):
    """A blocking call was interrupted by ``wakeup()`` from another thread."""

    code = 0

    @property
    def retriable(self) -> bool:
        return False


_BY_CODE: dict[int, type[ShoalError]] = {}
for _cls in list(globals().values()):
    if isinstance(_cls, type) and issubclass(_cls, ShoalError) and _cls is not ShoalError:
        # The first (server) class for a code wins over client-only subclasses.
        _BY_CODE.setdefault(_cls.code, _cls)
_BY_CODE[0] = ShoalError  # NONE never becomes an error through error_for_code.


def error_for_code(code: int, message: str = "") -> ShoalError:
    """The typed error for a Kafka error code number (unknown numbers → UnknownServerError)."""
    cls = _BY_CODE.get(code)
    if cls is None or code == 0:
        return UnknownServerError(message or f"unexpected error code {code}", code=code if code else -1)
    return cls(message)


def raise_for_code(code: int, message: str = "") -> None:
    """Raise the typed error for ``code`` unless it is NONE (0)."""
    if code != 0:
        raise error_for_code(code, message)


_STATUS_FALLBACK: dict[grpc.StatusCode, type[ShoalError]] = {
    grpc.StatusCode.UNAVAILABLE: BrokerNotAvailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: RequestTimedOutError,
    grpc.StatusCode.CANCELLED: BrokerNotAvailableError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: UnknownTopicOrPartitionError,
    grpc.StatusCode.UNIMPLEMENTED: UnsupportedVersionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: MessageTooLargeError,
}


def error_from_rpc(exc: grpc.RpcError, address: str = "") -> ShoalError:
    """Map a failed gRPC call to the typed error it stands for."""
    code_fn = getattr(exc, "code", None)
    status = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(exc, "details", None)
    details = (details_fn() if callable(details_fn) else "") or ""
    where = f" (node {address})" if address else ""
    trailing_fn = getattr(exc, "trailing_metadata", None)
    for key, value in (trailing_fn() if callable(trailing_fn) else None) or ():
        if key == ERROR_CODE_METADATA_KEY:
            try:
                number = shoal_pb2.ErrorCode.Value(value)
            except ValueError:
                break
            return error_for_code(number, details + where)
    cls = _STATUS_FALLBACK.get(status, UnknownServerError)
    return cls(f"{status.name}: {details}{where}" if details else f"{status.name}{where}")
