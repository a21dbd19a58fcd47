"""The metadata quorum: ``MetadataState`` replicated by pysyncobj (Raft).

This is the only module that imports pysyncobj. It adapts the pure
``cluster.metadata.MetadataState`` to a ``SyncObj`` and gives the node a
small blocking API: ``propose(command, timeout_s)``, leadership queries and
an ``on_applied`` hook.

Rules
-----
* Voters: every node listed in ``voters`` votes; the list is static
  (``dynamicMembershipChange=False``). A node whose id is not in ``voters``
  joins as a non-voting *observer* (pysyncobj's read-only node: it dials the
  voters, receives and applies the log, may propose, never votes and never
  counts towards a commit). Observers keep their own journal and dump, so a
  restarted observer catches up from its own data first.
* Durability: pysyncobj never fsyncs. The journal is an mmap'd file and the
  term/vote/commit index are written without fsync, so committed metadata
  survives ``kill -9`` of any number of nodes (the page cache is the
  kernel's), but **not a power loss or kernel crash** of a majority. Both
  ``journalFile`` and ``fullDumpFile`` are set: with a journal alone, log
  compaction throws away entries whose only other copy was in memory, and a
  full-cluster restart comes back empty (measured; see
  dependencies-notes.md §8.1).
* ``on_applied(command, result, version)`` runs in pysyncobj's tick thread,
  after the state changed, on every node (also while the journal is replayed
  at start-up). It must be quick and must not block: hand the work to the
  node's event loop (``loop.call_soon_threadsafe``). Treat it as a hint that
  something changed and reconcile against ``state.image``: when a snapshot is
  installed (start-up, or a follower too far behind) the whole state is
  replaced and the hook receives ``SnapshotLoaded`` instead of the commands.
* ``on_leadership_change(is_leader, term)`` also runs in the tick thread.
  ``is_leader()`` is not a lease: a deposed leader believes it leads until it
  hears a higher term or ``leader_fallback_timeout_ms`` passes. That is safe
  here because the controller only acts through ``propose`` and every command
  is compare-and-set on epochs, so a stale leader's decisions either fail to
  commit or are refused when applied.
* An exception while applying a committed command, or from ``on_applied``,
  is fatal: pysyncobj would re-apply the same entry forever, and a node that
  skipped one has a diverged replica. The default ``fatal_handler`` logs and
  exits the process (status 70), as Kafka's fatal fault handler does.

Theory of operation
-------------------
``propose`` pickles the command into a replicated call on the consumer. On a
follower pysyncobj forwards it to the leader; the proposer's callback fires
when the proposer itself applies the entry, with the result its own state
machine computed, so after ``propose`` returns the local ``state`` already
includes the change (read-your-writes on the proposing node). pysyncobj
callbacks have no timeout and may never fire after leader churn, so
``propose`` waits on its own deadline and reports REQUEST_TIMED_OUT (outcome
unknown; the command may still commit, which the epochs make harmless).
Failures that prove the command was not appended (no leader known, entry
overwritten by a new leader) are retried inside the deadline. At most
``commands_in_flight_max`` proposals wait at once: a burst of thousands of
commands destabilised a 3-node quorum on this 2-core host.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated

from cluster.metadata import MetadataCommand, MetadataState, Rejected
from coordinator.errors import ErrorCode, OperatingError

logger = logging.getLogger(__name__)

_RAFT_STATE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}
_RAFT_LEADER = 2
#: How long propose waits before retrying a command that was provably not
#: appended (no leader yet, or overwritten). Short against election times.
_RETRY_PAUSE_S = 0.05
FATAL_EXIT_STATUS = 70


@dataclass(frozen=True, slots=True)
class SnapshotLoaded:
    """Passed to ``on_applied`` when a snapshot replaced the whole state."""

    version: int


@dataclass(frozen=True, slots=True)
class QuorumSettings:
    """pysyncobj tuning, in shoal's units. Defaults follow the measurements in
    dependencies-notes.md §7, adjusted for nodes that share 2 cores with gRPC.
    """

    #: Election timeout range. 0.3/0.6 s measured fine on an idle quorum, but
    #: here the tick thread shares the GIL and 2 cores with the gRPC data
    #: path; a 300 ms GIL stall would start needless elections. 0.5/1.0 s
    #: keeps failover around 0.5-1.5 s.
    election_timeout_min_ms: int = 500
    election_timeout_max_ms: int = 1000
    #: Heartbeat period; must be below a third of the minimum election timeout.
    append_entries_period_ms: int = 50
    #: Re-dial period (default 5 s delayed a restarted node's catch-up).
    connection_retry_ms: int = 500
    #: Must be >= election_timeout_max_ms (pysyncobj asserts it).
    connection_timeout_ms: int = 3500
    #: An isolated leader steps down after this long without a majority
    #: (default 30 s would leave a zombie controller for half a minute).
    leader_fallback_timeout_ms: int = 1000
    #: Proposals waiting at once in ``propose``.
    commands_in_flight_max: int = 64
    #: pysyncobj's own queue of commands not yet appended.
    commands_queue_size: int = 1024
    #: Snapshot (fork + pickle of the image) after this many entries or this
    #: long, and not on all nodes at once (split).
    log_compaction_min_entries: int = 50_000
    log_compaction_min_time_ms: int = 300_000
    log_compaction_split: bool = True

    def validate(self) -> None:
        if not 0 < self.append_entries_period_ms * 3 < self.election_timeout_min_ms:
            raise ValueError("election_timeout_min_ms must exceed 3 × append_entries_period_ms")
        if self.election_timeout_max_ms <= self.election_timeout_min_ms:
            raise ValueError("election_timeout_max_ms must exceed election_timeout_min_ms")
        if self.connection_timeout_ms < self.election_timeout_max_ms:
            raise ValueError("connection_timeout_ms must be >= election_timeout_max_ms")
        if self.leader_fallback_timeout_ms <= self.append_entries_period_ms:
            raise ValueError("leader_fallback_timeout_ms must exceed append_entries_period_ms")
        if not 1 <= self.commands_in_flight_max <= self.commands_queue_size <= 100_000:
            raise ValueError("need 1 <= commands_in_flight_max <= commands_queue_size <= 100000")
        if self.connection_retry_ms <= 0 or self.log_compaction_min_entries < 1 or self.log_compaction_min_time_ms <= 0:
            raise ValueError("connection_retry_ms, log_compaction_min_entries and log_compaction_min_time_ms must be positive")


def _exit_process(error: BaseException) -> None:
    logger.critical("metadata replica cannot apply a committed command; exiting", exc_info=error)
    os._exit(FATAL_EXIT_STATUS)


class _MetadataConsumer(SyncObjConsumer):
    """Holds the MetadataState for pysyncobj. Attributes set before
    ``super().__init__()`` are not part of snapshots; the snapshot is the
    image alone (see ``_serialize``)."""

    def __init__(
        self,
        state: MetadataState,
        after_apply: Callable[[object, object], None],
        fatal_handler: Callable[[BaseException], None],
    ) -> None:
        self._state = state
        self._after_apply = after_apply
        self._fatal_handler = fatal_handler
        super().__init__()

    def _serialize(self) -> dict[str, object]:
        return {"image": self._state.image}

    def _deserialize(self, data: dict[str, object]) -> None:
        self._state.load_image(data["image"])  # type: ignore[arg-type]
        self._after_apply(SnapshotLoaded(self._state.version), None)

    @replicated
    def apply_command(self, command: MetadataCommand) -> object:
        try:
            result = self._state.apply(command)
        except BaseException as error:  # a broken invariant: see the module docstring
            self._fatal_handler(error)
            raise
        self._after_apply(command, result)
        return result


@dataclass(slots=True, eq=False)
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    fail_reason: int | None = None

    def on_result(self, result: object, fail_reason: int) -> None:
        self.result = result
        self.fail_reason = fail_reason
        self.done.set()


class MetadataQuorum:
    """One node's member of the metadata quorum (voter or observer)."""

    def __init__(
        self,
        node_id: int,
        raft_address: str | None,
        voters: dict[int, str],
        data_dir: Path,
        on_applied: Callable[[object, object, int], None] | None = None,
        on_leadership_change: Callable[[bool, int], None] | None = None,
        settings: QuorumSettings = QuorumSettings(),
        fatal_handler: Callable[[BaseException], None] = _exit_process,
    ) -> None:
        settings.validate()
        if not voters:
            raise ValueError("the quorum needs at least one voter")
        addresses = list(voters.values())
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"two voters share a raft address: {voters}")
        for address in addresses:
            _check_address(address)
        self.node_id = node_id
        self.voter = node_id in voters
        if self.voter and raft_address != voters[node_id]:
            raise ValueError(f"node {node_id} is a voter at {voters[node_id]} but was given raft address {raft_address}")
        self._voters = dict(voters)
        self._node_ids_by_address = {address: voter_id for voter_id, address in voters.items()}
        self._settings = settings
        self._on_applied = on_applied
        self._on_leadership_change = on_leadership_change
        self._fatal_handler = fatal_handler
        self._in_flight = threading.BoundedSemaphore(settings.commands_in_flight_max)
        self._pending: set[_Pending] = set()
        self._pending_lock = threading.Lock()
        self._closed = threading.Event()
        self._was_leader = False
        self._sync_obj: SyncObj | None = None

        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self._state = MetadataState()
        self._consumer = _MetadataConsumer(self._state, self._after_apply, fatal_handler)
        conf = SyncObjConf(
            autoTick=True,
            appendEntriesUseBatch=False,  # commit per command (~1 ms) instead of per heartbeat
            appendEntriesPeriod=settings.append_entries_period_ms / 1000,
            raftMinTimeout=settings.election_timeout_min_ms / 1000,
            raftMaxTimeout=settings.election_timeout_max_ms / 1000,
            connectionRetryTime=settings.connection_retry_ms / 1000,
            connectionTimeout=settings.connection_timeout_ms / 1000,
            leaderFallbackTimeout=settings.leader_fallback_timeout_ms / 1000,
            journalFile=str(data_dir / "raft.journal"),
            fullDumpFile=str(data_dir / "raft.dump"),
            logCompactionMinEntries=settings.log_compaction_min_entries,
            logCompactionMinTime=settings.log_compaction_min_time_ms / 1000,
            logCompactionSplit=settings.log_compaction_split,
            # Without a leader a proposal fails at once (MISSING_LEADER) and
            # propose retries within its deadline, rather than sitting in
            # pysyncobj's queue and committing long after the caller gave up.
            commandsWaitLeader=False,
            commandsQueueSize=settings.commands_queue_size,
            dynamicMembershipChange=False,
            onStateChanged=self._on_state_changed,
        )
        self_node = raft_address if self.voter else None
        other_nodes = [address for voter_id, address in voters.items() if voter_id != node_id]
        self._sync_obj = SyncObj(self_node, other_nodes, conf=conf, consumers=[self._consumer])

    # -- callbacks from the tick thread ------------------------------------

    def _after_apply(self, command: object, result: object) -> None:
        if self._on_applied is None:
            return
        try:
            self._on_applied(command, result, self._state.version)
        except BaseException as error:  # see the module docstring: fatal
            self._fatal_handler(error)
            raise

    def _on_state_changed(self, old_state: int, new_state: int) -> None:
        is_leader = new_state == _RAFT_LEADER
        if is_leader == self._was_leader:
            return
        self._was_leader = is_leader
        sync_obj = self._sync_obj
        term = sync_obj.raftCurrentTerm if sync_obj is not None else 0
        if self._on_leadership_change is not None:
            try:
                self._on_leadership_change(is_leader, term)
            except BaseException as error:  # a node that missed a leadership change is wrong
                self._fatal_handler(error)
                raise

    # -- proposals ------------------------------------------------------------

    def propose(self, command: MetadataCommand, timeout_s: float) -> object:
        """Replicate ``command``; return its result once applied on this node.

        Raises the command's own refusal as ``OperatingError``; NOT_CONTROLLER
        (retriable) when no leader was found or the quorum is closed;
        REQUEST_TIMED_OUT (retriable, outcome unknown) at the deadline or when
        ``commands_in_flight_max`` proposals already wait.
        """
        assert timeout_s > 0
        deadline = time.monotonic() + timeout_s
        if self._closed.is_set():
            raise OperatingError(ErrorCode.NOT_CONTROLLER, f"metadata quorum of node {self.node_id} is closed")
        if not self._in_flight.acquire(timeout=timeout_s):
            raise OperatingError(
                ErrorCode.REQUEST_TIMED_OUT,
                f"{self._settings.commands_in_flight_max} metadata proposals already in flight for {timeout_s} s; "
                "retry with backoff",
            )
        try:
            return self._propose_until(command, deadline, timeout_s)
        finally:
            self._in_flight.release()

    def _propose_until(self, command: MetadataCommand, deadline: float, timeout_s: float) -> object:
        assert self._sync_obj is not None
        last_reason = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed.is_set():
                break
            pending = _Pending()
            with self._pending_lock:
                self._pending.add(pending)
            try:
                self._consumer.apply_command(command, callback=pending.on_result)
                answered = pending.done.wait(remaining)
            finally:
                with self._pending_lock:
                    self._pending.discard(pending)
            if not answered:
                break
            reason = pending.fail_reason
            if reason == FAIL_REASON.SUCCESS:
                if isinstance(pending.result, Rejected):
                    raise pending.result.to_error()
                return pending.result
            if reason in (FAIL_REASON.MISSING_LEADER, FAIL_REASON.DISCARDED):
                # Provably not applied: no leader to send it to, or the entry
                # was overwritten by a new leader. Safe to send again.
                last_reason = "no metadata leader" if reason == FAIL_REASON.MISSING_LEADER else "entry discarded"
                self._closed.wait(min(_RETRY_PAUSE_S, max(0.0, deadline - time.monotonic())))
                continue
            if reason in (FAIL_REASON.NOT_LEADER, FAIL_REASON.LEADER_CHANGED, FAIL_REASON.REQUEST_DENIED):
                raise OperatingError(
                    ErrorCode.NOT_CONTROLLER,
                    f"the metadata leader changed while the command was in flight ({_fail_name(reason)}); "
                    "its outcome is unknown, retry",
                )
            if reason is None:  # woken by close()
                raise OperatingError(ErrorCode.NOT_CONTROLLER, f"metadata quorum of node {self.node_id} is closed")
            raise OperatingError(
                ErrorCode.REQUEST_TIMED_OUT, f"metadata command failed with {_fail_name(reason)}; retry with backoff"
            )
        if self._closed.is_set():
            raise OperatingError(ErrorCode.NOT_CONTROLLER, f"metadata quorum of node {self.node_id} is closed")
        if last_reason == "no metadata leader":
            raise OperatingError(
                ErrorCode.NOT_CONTROLLER, f"no metadata leader elected within {timeout_s} s (is a majority of voters up?)"
            )
        raise OperatingError(
            ErrorCode.REQUEST_TIMED_OUT,
            f"metadata command not committed within {timeout_s} s ({last_reason}); it may still commit, retry",
        )

    # -- queries ----------------------------------------------------------------

    @property
    def state(self) -> MetadataState:
        """This node's metadata replica. Read-only for callers: take
        ``state.image`` once for consistent reads; never mutate it."""
        return self._state

    def is_leader(self) -> bool:
        """True while this node is the Raft leader (the active controller).
        Not a lease: see the module docstring."""
        return self._sync_obj is not None and self._sync_obj._isLeader()

    def leader_node_id(self) -> int | None:
        """The node id of the last known Raft leader, or None."""
        assert self._sync_obj is not None
        leader = self._sync_obj._getLeader()
        if leader is None:
            return None
        return self._node_ids_by_address.get(leader.address if hasattr(leader, "address") else str(leader))

    def term(self) -> int:
        assert self._sync_obj is not None
        return self._sync_obj.raftCurrentTerm

    def commit_index(self) -> int:
        assert self._sync_obj is not None
        return self._sync_obj.raftCommitIndex

    def is_ready(self) -> bool:
        """True once this node has caught up with the leader's commit index."""
        assert self._sync_obj is not None
        return self._sync_obj.isReady()

    def status(self) -> dict[str, object]:
        """A JSON-friendly summary for admin tools and metrics."""
        assert self._sync_obj is not None
        raw = self._read_raw_status()
        leader_id = self.leader_node_id()
        return {
            "node_id": self.node_id,
            "voter": self.voter,
            "raft_state": _RAFT_STATE_NAMES.get(raw.get("state"), str(raw.get("state"))),
            "leader_node_id": leader_id,
            "term": raw.get("raft_term"),
            "commit_index": raw.get("commit_idx"),
            "last_applied": raw.get("last_applied"),
            "log_length": raw.get("log_len"),
            "has_quorum": raw.get("has_quorum"),
            "metadata_version": self._state.version,
            "connected_voters": sorted(
                voter_id
                for voter_id, address in self._voters.items()
                if raw.get("partner_node_status_server_" + address) == 2
            ),
        }

    def _read_raw_status(self) -> dict[str, object]:
        # getStatus iterates dicts that the tick thread may resize at that
        # moment; a retry sees a settled dict.
        assert self._sync_obj is not None
        for _ in range(10):
            try:
                return self._sync_obj.getStatus()
            except RuntimeError:
                continue
        return self._sync_obj.getStatus()

    def compact_log(self) -> None:
        """Ask for a snapshot at the next tick (respects log_compaction_split)."""
        assert self._sync_obj is not None
        self._sync_obj.forceLogCompaction()

    def close(self) -> None:
        """Stop the tick thread, close sockets and flush the journal. Waiting
        proposals fail with NOT_CONTROLLER."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._pending_lock:
            for pending in self._pending:
                pending.done.set()
        if self._sync_obj is not None:
            self._sync_obj.destroy_synchronous()


def _fail_name(reason: int) -> str:
    for name in dir(FAIL_REASON):
        if not name.startswith("_") and getattr(FAIL_REASON, name) == reason:
            return name
    return str(reason)


def _check_address(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"raft address {address!r} must be host:port")
