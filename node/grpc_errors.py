"""Mapping operating errors onto gRPC: status codes and the "shoal-error-code" trailer.

Rules (STYLE.md §5, proto/shoal.proto header)
* Per-partition failures never become a gRPC status: they go into the
  response's ``error_code``/``error_message`` (`to_proto_code`).
* A request-level failure aborts the call with a status code chosen by what the
  caller should do, and the ErrorCode name in the trailing metadata key
  ``shoal-error-code``: UNAVAILABLE (retry the same call, maybe elsewhere),
  ABORTED (a fenced epoch), FAILED_PRECONDITION (invalid state),
  RESOURCE_EXHAUSTED (a limit), INVALID_ARGUMENT (bad input), NOT_FOUND
  (unknown topic/group/partition).
* An exception that is not an OperatingError is a programmer error: gRPC
  reports it as UNKNOWN and the node logs the traceback; it is never mapped
  into a typed error here.
"""

from __future__ import annotations

import grpc

from coordinator.errors import ErrorCode, OperatingError

ERROR_CODE_METADATA_KEY = "shoal-error-code"

_STATUS_BY_CODE: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION: grpc.StatusCode.NOT_FOUND,
    ErrorCode.UNKNOWN_TOPIC_ID: grpc.StatusCode.NOT_FOUND,
    ErrorCode.GROUP_ID_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.UNKNOWN_MEMBER_ID: grpc.StatusCode.NOT_FOUND,
    ErrorCode.FENCED_LEADER_EPOCH: grpc.StatusCode.ABORTED,
    ErrorCode.FENCED_STATE_EPOCH: grpc.StatusCode.ABORTED,
    ErrorCode.FENCED_MEMBER_EPOCH: grpc.StatusCode.ABORTED,
    ErrorCode.STALE_MEMBER_EPOCH: grpc.StatusCode.ABORTED,
    ErrorCode.INVALID_PRODUCER_EPOCH: grpc.StatusCode.ABORTED,
    ErrorCode.ILLEGAL_GENERATION: grpc.StatusCode.ABORTED,
    ErrorCode.MESSAGE_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.RECORD_LIST_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.GROUP_MAX_SIZE_REACHED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.SHARE_SESSION_LIMIT_REACHED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.POLICY_VIOLATION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.TOPIC_ALREADY_EXISTS: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.GROUP_NOT_EMPTY: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.INVALID_RECORD_STATE: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.INCONSISTENT_GROUP_PROTOCOL: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.OFFSET_OUT_OF_RANGE: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.UNSUPPORTED_VERSION: grpc.StatusCode.FAILED_PRECONDITION,
}

_INVALID_ARGUMENT_CODES = {
    ErrorCode.CORRUPT_MESSAGE,
    ErrorCode.INVALID_TOPIC_EXCEPTION,
    ErrorCode.INVALID_FETCH_SIZE,
    ErrorCode.INVALID_REQUIRED_ACKS,
    ErrorCode.INVALID_PARTITIONS,
    ErrorCode.INVALID_REPLICATION_FACTOR,
    ErrorCode.INVALID_REPLICA_ASSIGNMENT,
    ErrorCode.INVALID_CONFIG,
    ErrorCode.INVALID_REQUEST,
    ErrorCode.INVALID_RECORD,
    ErrorCode.INVALID_TIMESTAMP,
    ErrorCode.INVALID_GROUP_ID,
    ErrorCode.INVALID_SESSION_TIMEOUT,
    ErrorCode.INVALID_COMMIT_OFFSET_SIZE,
}


def status_for(code: ErrorCode) -> grpc.StatusCode:
    """The gRPC status a request-level failure with this code is reported as."""
    if code in _STATUS_BY_CODE:
        return _STATUS_BY_CODE[code]
    if code in _INVALID_ARGUMENT_CODES:
        return grpc.StatusCode.INVALID_ARGUMENT
    if OperatingError(code, "").retriable:
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.FAILED_PRECONDITION


def to_proto_code(code: ErrorCode) -> int:
    """ErrorCode → the proto enum value (same numbers by construction)."""
    return int(code)


async def abort_with(context: grpc.aio.ServicerContext, error: OperatingError) -> None:
    """End the call with the status for ``error`` and its code in the trailer; never returns."""
    context.set_trailing_metadata(((ERROR_CODE_METADATA_KEY, error.code.name),))
    await context.abort(status_for(error.code), error.message)


def error_code_of(exc: grpc.aio.AioRpcError | grpc.RpcError) -> ErrorCode | None:
    """The ErrorCode a shoal node put in a failed call's trailer, if any."""
    try:
        trailers = exc.trailing_metadata() or ()
    except Exception:  # a channel-level failure has no trailers
        return None
    for key, value in trailers:
        if key == ERROR_CODE_METADATA_KEY:
            try:
                return ErrorCode[value]
            except KeyError:
                return None
    return None
