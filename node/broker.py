"""One shoal node: the metadata quorum member, the data plane and the servers, wired.

Rules
* Threads: everything runs on one asyncio loop except pysyncobj's tick thread
  (the quorum) and the proposal executor (``MetadataQuorum.propose`` blocks).
  The tick thread's ``on_applied`` only schedules a reconcile on the loop
  (``call_soon_threadsafe``); reconciles coalesce and always read the newest
  image, so a burst of commits costs one reconcile.
* Start-up order: open the quorum (the journal replays, the image fills), start
  the gRPC server, register this process as a new incarnation (RegisterBroker
  through the quorum, retried until a controller answers), then heartbeat the
  active controller. A registration starts fenced; the controller unfences the
  broker on a heartbeat once the previous incarnation's leaderships are gone.
* The node acts on metadata (leads, follows, deletes logs) only once the
  image contains this incarnation's own registration: before that it is the
  replayed past, and leading from it would serve epochs long gone.
* Shutdown order (SIGTERM): controlled shutdown (heartbeat with
  ``want_shutdown`` until the controller says no partition is led here, at
  most ``controlled.shutdown.timeout.ms``), stop the controller loop, stop the
  fetchers, stop serving (grace for in-flight calls), flush and close the
  logs, close the quorum.
* Admin mutations (CreateTopics, DeleteTopics, AlterTopicConfigs) are decided
  on the active controller: a non-controller node forwards the same RPC to
  the controller's gRPC listener (see node/server.py). That keeps placement on
  the freshest image and lets one node stamp topic ids.

Theory of operation
`Node` owns: `MetadataQuorum` (cluster/raft.py), `ReplicaManager`
(LocalPartitions), `FetcherManager`, `ControllerService`, `Peers`, the
`ClusterView` below, optional group services (node/group_rpc.py, loaded
lazily), the metrics endpoint (node/metrics.py, when ``--metrics-port`` is
given) and the gRPC server (node/server.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import uuid
from typing import Callable

import grpc

from cluster.metadata import MetadataImage, RegisterBroker
from cluster.raft import MetadataQuorum, QuorumSettings
from coordinator.errors import ErrorCode, OperatingError
from node.config import NodeConfig
from node.controller_service import ControllerService
from node.fetcher import FetcherManager
from node.grpc_errors import error_code_of
from node.interfaces import PartitionLeader, monotonic_ms
from node.peers import Peers
from node.replica_manager import ReplicaManager
from proto import shoal_pb2

log = logging.getLogger("node")

REGISTER_RETRY_S = 0.2
CATCH_UP_POLL_S = 0.1


class StartupError(Exception):
    """The node cannot start (a port is taken, ...); the message says what to fix."""


class MetadataView:
    """`ClusterView` over the image this node last applied (read-only)."""

    def __init__(self, node_id: int, image: Callable[[], MetadataImage]) -> None:
        self.node_id = node_id
        self._image = image
        self._listeners: list[Callable[[], None]] = []

    @property
    def image(self) -> MetadataImage:
        return self._image()

    def partition_count(self, topic: str) -> int:
        registration = self._image().topic_by_name(topic)
        if registration is None:
            raise OperatingError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {topic!r} does not exist")
        return len(registration.partitions)

    def topic_partition_counts(self) -> dict[str, int]:
        return {t.name: len(t.partitions) for t in self._image().topics() if not t.internal}

    def partition_leader(self, topic: str, partition: int) -> PartitionLeader:
        registration = self._image().partition(topic, partition)
        return PartitionLeader(registration.leader, registration.leader_epoch)

    def broker_address(self, node_id: int) -> str | None:
        registration = self._image().broker(node_id)
        if registration is None:
            return None
        return registration.address

    def add_metadata_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("metadata listener failed")


def load_group_services():
    """The group/share services class, or None while node/group_rpc.py is absent."""
    try:
        from node.group_rpc import GroupServices  # type: ignore[import-not-found]
    except ModuleNotFoundError as error:
        if error.name in ("node.group_rpc",):
            return None
        raise
    return GroupServices


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.node_id = config.node_id
        self.settings = config.settings
        self.incarnation_id = uuid.uuid4().hex
        self.broker_epoch = -1
        self.registered = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # One thread per proposal that may wait at once: the executor is the
        # node's cap on metadata commands in flight.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.settings["controller.max.inflight.commands"] + 2,
            thread_name_prefix=f"propose-{config.node_id}",
        )
        self._reconcile_scheduled = False
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self.quorum: MetadataQuorum | None = None
        self.server: grpc.aio.Server | None = None
        self.group_services = None
        self.metrics = None
        self.last_heartbeat_response: shoal_pb2.BrokerHeartbeatResponse | None = None

    # ------------------------------------------------------------ quorum glue

    def image(self) -> MetadataImage:
        assert self.quorum is not None
        return self.quorum.state.image

    async def propose(self, command: object, timeout_s: float) -> object:
        """Replicate a metadata command (blocking call run in the executor)."""
        assert self.quorum is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.quorum.propose, command, timeout_s)

    def _on_applied(self, command: object, result: object, version: int) -> None:
        # pysyncobj's tick thread: hand over and return at once.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._schedule_reconcile)
            except RuntimeError:
                pass  # the loop closed during shutdown

    def _on_leadership_change(self, is_leader: bool, term: int) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._leadership_changed, is_leader, term)
            except RuntimeError:
                pass

    def _leadership_changed(self, is_leader: bool, term: int) -> None:
        log.info("raft %s at term %d", "leader" if is_leader else "follower", term)
        self.controller.leadership_changed()

    def _schedule_reconcile(self) -> None:
        if self._reconcile_scheduled or self._stopping:
            return
        self._reconcile_scheduled = True
        self._loop.call_soon(self._reconcile)

    def _reconcile(self) -> None:
        self._reconcile_scheduled = False
        if self._stopping or self.quorum is None:
            return
        image = self.image()
        # Caught up means: this process's own registration is in the image we
        # apply. It was committed after everything the cluster decided before
        # this process started, so the image is not the replayed past (the
        # journal replay alone stops at the last commit index this node had
        # persisted, which may be long stale).
        registration = image.broker(self.node_id)
        caught_up = (
            self.quorum.is_ready()
            and registration is not None
            and registration.incarnation_id == self.incarnation_id
        )
        self.replicas.apply_metadata(image, caught_up=caught_up)
        self.view.notify()
        if not caught_up:
            # Readiness changes without an applied command; look again soon.
            self._loop.call_later(CATCH_UP_POLL_S, self._schedule_reconcile)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        config = self.config
        data_dir = config.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        voters = {member.node_id: member.address for member in config.controller_quorum}
        member = config.raft_member
        max_message_bytes = self.settings["grpc.max.message.bytes"]

        self.view = MetadataView(self.node_id, lambda: self.image())
        self.peers = Peers(self.view.broker_address, max_message_bytes)
        self.replicas = ReplicaManager(self.node_id, data_dir, self.settings, self.propose)
        self.fetchers = FetcherManager(self.node_id, lambda: self.broker_epoch, self.replicas, self.peers, self.settings)
        self.replicas.on_follow_changed = self.fetchers.follow
        self.controller = ControllerService(
            self.node_id,
            self.image,
            lambda: self.quorum is not None and self.quorum.is_leader(),
            self.propose,
            self.settings,
            voter_count=len(voters),
        )
        # Ports first: a node that cannot listen exits before it touches the
        # quorum (StartupError, exit status 1 with one line on stderr).
        interceptors = []
        if config.metrics_port is not None:
            from node.metrics import NodeMetrics, wire_node

            self.metrics = NodeMetrics(self.node_id)
            interceptors.append(self.metrics.interceptor)
            try:
                self.metrics.start_server(config.metrics_port, config.listen_host)
            except OSError as error:
                raise StartupError(f"cannot serve metrics on {config.listen_host}:{config.metrics_port}: {error.strerror}") from None
        from node.server import build_server

        self.server = build_server(self, max_message_bytes, interceptors)
        try:
            self.server.add_insecure_port(config.listen)
        except RuntimeError:
            if self.metrics is not None:
                self.metrics.stop_server()
            raise StartupError(f"cannot listen on {config.listen}: the address is in use or not local") from None
        # The quorum starts its tick thread in the constructor and replays the
        # journal, calling on_applied; the loop picks that up once we yield.
        self.quorum = await self._loop.run_in_executor(
            self._executor,
            lambda: MetadataQuorum(
                node_id=self.node_id,
                raft_address=member.address if member is not None else None,
                voters=voters,
                data_dir=data_dir / "raft",
                on_applied=self._on_applied,
                on_leadership_change=self._on_leadership_change,
                settings=QuorumSettings(commands_in_flight_max=self.settings["controller.max.inflight.commands"]),
            ),
        )
        group_services_class = load_group_services()
        if group_services_class is not None:
            self.group_services = group_services_class(self.replicas, self.view, self.peers, dict(self.settings.raw))
        if self.metrics is not None:
            wire_node(self.metrics, self)
        await self.server.start()
        self.replicas.start()
        self.controller.start()
        self._schedule_reconcile()
        if self.group_services is not None:
            await self.group_services.start()
        self._tasks.append(self._loop.create_task(self._register_and_heartbeat()))
        log.info(
            "node %d listening on %s (raft %s, data %s, incarnation %s)",
            self.node_id,
            config.listen,
            member.address if member is not None else "observer",
            data_dir,
            self.incarnation_id,
        )

    async def _register(self) -> None:
        command = RegisterBroker(
            broker_id=self.node_id,
            host=self.config.listen_host,
            port=self.config.listen_port,
            incarnation_id=self.incarnation_id,
        )
        while not self._stopping:
            try:
                self.broker_epoch = int(await self.propose(command, 5.0))
                self.registered.set()
                log.info("registered as broker %d with epoch %d", self.node_id, self.broker_epoch)
                return
            except OperatingError as error:
                if not error.retriable:
                    log.error("registration refused: %s", error)
                    raise
                log.info("registration not yet possible: %s", error.message)
                await asyncio.sleep(REGISTER_RETRY_S)

    async def _register_and_heartbeat(self) -> None:
        await self._register()
        interval_s = self.settings["broker.heartbeat.interval.ms"] / 1000
        while not self._stopping:
            await self.heartbeat_once(want_shutdown=False)
            await asyncio.sleep(interval_s)

    async def heartbeat_once(self, want_shutdown: bool) -> shoal_pb2.BrokerHeartbeatResponse | None:
        """One heartbeat to the active controller; None when it could not be reached."""
        assert self.quorum is not None
        request = shoal_pb2.BrokerHeartbeatRequest(
            broker_id=self.node_id,
            broker_epoch=self.broker_epoch,
            incarnation_id=self.incarnation_id,
            want_shutdown=want_shutdown,
        )
        controller_id = self.quorum.leader_node_id()
        if controller_id is None:
            return None
        timeout_s = max(0.2, self.settings["broker.session.timeout.ms"] / 4000)
        try:
            if controller_id == self.node_id:
                response = await self.controller.heartbeat(request)
            else:
                response = await self.peers.internal(controller_id).BrokerHeartbeat(request, timeout=timeout_s)
        except OperatingError as error:
            log.debug("heartbeat refused by the local controller: %s", error)
            return None
        except grpc.aio.AioRpcError as error:
            log.debug("heartbeat to node %s failed: %s %s", controller_id, error_code_of(error), error.details())
            return None
        except KeyError:
            return None  # the controller's address is not in our metadata yet
        self.last_heartbeat_response = response
        return response

    async def _controlled_shutdown(self) -> None:
        if self.broker_epoch < 0:
            return
        deadline_ms = monotonic_ms() + self.settings["controlled.shutdown.timeout.ms"]
        interval_s = self.settings["broker.heartbeat.interval.ms"] / 1000
        while monotonic_ms() < deadline_ms:
            response = await self.heartbeat_once(want_shutdown=True)
            if response is not None and response.shutdown_ready:
                log.info("controlled shutdown: no partition is led here any more")
                return
            await asyncio.sleep(interval_s)
        log.warning("controlled shutdown did not complete in time; stopping anyway")

    async def stop(self) -> None:
        log.info("shutting down")
        # The regular heartbeats stop first: one of them would withdraw the
        # controlled-shutdown request.
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        try:
            await self._controlled_shutdown()
        except Exception:
            log.exception("controlled shutdown failed")
        self._stopping = True
        await self.controller.stop()
        await self.fetchers.stop()
        if self.group_services is not None:
            try:
                await self.group_services.stop()
            except Exception:
                log.exception("stopping the group services failed")
        if self.server is not None:
            await self.server.stop(grace=1.0)
        await self.replicas.close()
        await self.peers.close()
        if self.metrics is not None:
            self.metrics.stop_server()
        if self.quorum is not None:
            quorum = self.quorum
            await asyncio.get_running_loop().run_in_executor(self._executor, quorum.close)
        self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")
