"""The active controller: the loops that run on the Raft leader only.

Rules
* Only the node that is the Raft leader acts as controller; every other node
  answers controller RPCs with NOT_CONTROLLER (UNAVAILABLE, retry elsewhere).
  ``is_leader()`` is not a lease (cluster/raft.py): a deposed controller may
  still run a loop iteration, but every command it proposes carries expected
  epochs (compare-and-set), so its decisions are refused, never applied twice.
* Every decision comes from `cluster.controller` (pure functions of the
  image); this module only stamps times and ids, proposes, and keeps the
  heartbeat book. Proposals go through `propose`, which caps the commands in
  flight (``controller.max.inflight.commands``): a burst of thousands of
  commands destabilised the quorum on two cores.
* Liveness: every broker heartbeats the active controller every
  ``broker.heartbeat.interval.ms``; a broker silent for
  ``broker.session.timeout.ms`` is fenced and its leaderships move to the next
  live ISR member (no unclean election). A newly active controller gives every
  live broker a full session timeout of grace (it cannot know their last
  heartbeats).
* A fenced broker is unfenced by its heartbeat only once no partition still
  names it as leader or as an ISR member beside other live members: a
  restarted process (new incarnation, registered fenced) must first lose the
  leaderships and ISR places of its previous incarnation, whose in-memory
  state (high watermarks, follower positions) died with it.
* Level-triggered: each tick reconciles the whole image (``reconcile_partitions``),
  so a controller that died between fencing a broker and moving its
  leaderships is repaired by its successor.

Theory of operation
One asyncio task ticks every `TICK_MS` while this node leads the quorum:
fence expired sessions, reconcile partitions, create the internal topics once
enough brokers are live, handle controlled-shutdown requests, and (when
enabled) move leadership back to preferred replicas. Heartbeats are answered
from the in-memory book and trigger unfence proposals in the background.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Awaitable, Callable

from cluster import controller as decisions
from cluster.metadata import ElectLeaders, FenceBroker, MetadataImage
from coordinator.errors import ErrorCode, OperatingError
from node.interfaces import CONSUMER_OFFSETS_TOPIC, SHARE_STATE_TOPIC, monotonic_ms
from proto import shoal_pb2

log = logging.getLogger("node.controller")

TICK_MS = 100
PROPOSE_TIMEOUT_S = 5.0


class ControllerService:
    def __init__(
        self,
        node_id: int,
        image: Callable[[], MetadataImage],
        is_leader: Callable[[], bool],
        propose: Callable[[object, float], Awaitable[object]],
        settings,
        voter_count: int,
    ) -> None:
        self.node_id = node_id
        self._image = image
        self._is_leader = is_leader
        self._propose = propose
        self._settings = settings
        self._voter_count = voter_count
        self._liveness = decisions.BrokerLiveness()
        self._active = False
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._shutdown_requests: set[int] = set()
        self._internal_topic_ids = {
            CONSUMER_OFFSETS_TOPIC: uuid.uuid4().hex,
            SHARE_STATE_TOPIC: uuid.uuid4().hex,
        }
        self._unfence_in_flight: set[int] = set()
        self._next_rebalance_ms = 0
        self._stopped = False
        # Counters for metrics.
        self.fenced_brokers_total = 0
        self.elections_proposed_total = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def leadership_changed(self) -> None:
        """Called on the loop when this node gains or loses Raft leadership."""
        self._wake.set()

    @property
    def active(self) -> bool:
        return self._active

    # ------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while not self._stopped:
            try:
                await asyncio.wait_for(self._wake.wait(), TICK_MS / 1000)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            is_leader = self._is_leader()
            if is_leader and not self._active:
                self._active = True
                self._liveness = decisions.BrokerLiveness()
                self._liveness.sync(self._image(), monotonic_ms())
                self._next_rebalance_ms = monotonic_ms() + self._settings["leader.imbalance.check.interval.seconds"] * 1000
                log.info("this node is now the active controller")
            elif not is_leader and self._active:
                self._active = False
                log.info("this node is no longer the active controller")
            if not self._active:
                continue
            try:
                await self._tick()
            except OperatingError as error:
                # Lost leadership mid-tick or a timed-out proposal: the next
                # tick recomputes everything from the image.
                log.info("controller tick incomplete: %s", error)
            except Exception:
                log.exception("controller tick failed")

    async def _tick(self) -> None:
        now = monotonic_ms()
        image = self._image()
        self._liveness.sync(image, now)
        session_ms = self._settings["broker.session.timeout.ms"]
        for command in decisions.fence_expired_brokers(image, self._liveness, now, session_ms):
            log.warning("fencing broker %d: no heartbeat for %d ms", command.broker_id, session_ms)
            self.fenced_brokers_total += 1
            await self._propose_quietly(command)
            for election in decisions.on_broker_fenced(self._image(), command.broker_id):
                await self._propose_elections(election)
        for broker_id in sorted(self._shutdown_requests):
            await self._controlled_shutdown(broker_id)
        for election in decisions.reconcile_partitions(self._image()):
            await self._propose_elections(election)
        image = self._image()
        plan = decisions.internal_topic_plan(
            image,
            share_state_partitions=self._settings["share.coordinator.state.topic.num.partitions"],
            consumer_offsets_partitions=self._settings["offsets.topic.num.partitions"],
            live_brokers=image.live_broker_ids(),
            topic_ids=self._internal_topic_ids,
            voter_count=self._voter_count,
        )
        for command in plan:
            log.info("creating internal topic %s (%d partitions)", command.name, len(command.replica_assignment))
            await self._propose_quietly(command)
        if self._settings["auto.leader.rebalance.enable"] and now >= self._next_rebalance_ms:
            self._next_rebalance_ms = now + self._settings["leader.imbalance.check.interval.seconds"] * 1000
            for election in decisions.preferred_leader_elections(self._image(), max_elections=50):
                await self._propose_elections(election)

    async def _propose_elections(self, command: ElectLeaders) -> None:
        self.elections_proposed_total += len(command.elections)
        await self._propose_quietly(command)

    async def _propose_quietly(self, command: object) -> object | None:
        """Propose; a refusal is logged (the next tick recomputes from the image)."""
        try:
            return await self._propose(command, PROPOSE_TIMEOUT_S)
        except OperatingError as error:
            if error.code in (ErrorCode.NOT_CONTROLLER, ErrorCode.REQUEST_TIMED_OUT):
                raise
            log.info("%s refused: %s", type(command).__name__, error.message)
            return None

    async def _controlled_shutdown(self, broker_id: int) -> None:
        image = self._image()
        registration = image.broker(broker_id)
        if registration is None:
            self._shutdown_requests.discard(broker_id)
            return
        if registration.fenced and not image.partitions_led_by(broker_id):
            return
        for command in decisions.controlled_shutdown(image, broker_id):
            await self._propose_quietly(command)
            if isinstance(command, FenceBroker):
                self._liveness.forget(broker_id)

    # ------------------------------------------------------------ RPCs

    def _require_active(self) -> None:
        if not self._active or not self._is_leader():
            raise OperatingError(
                ErrorCode.NOT_CONTROLLER, f"node {self.node_id} is not the active controller; ask the Raft leader"
            )

    def _blocks_unfence(self, image: MetadataImage, broker_id: int) -> bool:
        for partition in image.all_partitions():
            if partition.leader == broker_id:
                return True
            if broker_id in partition.isr and any(image.is_live(b) for b in partition.isr if b != broker_id):
                return True
        return False

    async def heartbeat(self, request: shoal_pb2.BrokerHeartbeatRequest) -> shoal_pb2.BrokerHeartbeatResponse:
        self._require_active()
        image = self._image()
        registration = image.broker(request.broker_id)
        if registration is None or registration.incarnation_id != request.incarnation_id:
            raise OperatingError(
                ErrorCode.INVALID_REQUEST,
                f"broker {request.broker_id} incarnation {request.incarnation_id} is not registered "
                "(the controller may not have applied the registration yet); retry",
            )
        if registration.broker_epoch != request.broker_epoch:
            raise OperatingError(
                ErrorCode.INVALID_REQUEST,
                f"broker {request.broker_id} heartbeats with epoch {request.broker_epoch}, registered "
                f"epoch is {registration.broker_epoch}",
            )
        now = monotonic_ms()
        self._liveness.record_heartbeat(request.broker_id, request.broker_epoch, now)
        if request.want_shutdown:
            if request.broker_id not in self._shutdown_requests:
                log.info("broker %d asks for a controlled shutdown", request.broker_id)
                self._shutdown_requests.add(request.broker_id)
                self._wake.set()
            ready = not image.partitions_led_by(request.broker_id)
            return shoal_pb2.BrokerHeartbeatResponse(is_fenced=registration.fenced, shutdown_ready=ready)
        self._shutdown_requests.discard(request.broker_id)
        if registration.fenced and request.broker_id not in self._unfence_in_flight:
            # The broker heartbeats only after it applied its own registration,
            # so its metadata version is at least its broker epoch.
            command = decisions.should_unfence(image, request.broker_id, request.broker_epoch, request.broker_epoch)
            if command is not None and not self._blocks_unfence(image, request.broker_id):
                self._unfence_in_flight.add(request.broker_id)
                asyncio.get_running_loop().create_task(self._unfence(command))
            elif command is not None:
                self._wake.set()  # reconcile first: move its old leaderships
        return shoal_pb2.BrokerHeartbeatResponse(is_fenced=registration.fenced, shutdown_ready=False)

    async def _unfence(self, command) -> None:
        try:
            await self._propose_quietly(command)
            log.info("unfenced broker %d", command.broker_id)
            for election in decisions.on_broker_unfenced(self._image(), command.broker_id):
                await self._propose_elections(election)
        except OperatingError as error:
            log.info("unfencing broker %d failed: %s", command.broker_id, error)
        finally:
            self._unfence_in_flight.discard(command.broker_id)
