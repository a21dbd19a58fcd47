"""gRPC channels to the other nodes (implements `node.interfaces.PeerClients`).

Rules
* One ``grpc.aio`` channel per peer address, created on first use and kept;
  when the metadata gives a node a new address (it restarted elsewhere) the
  old channel is closed and a new one opened.
* Channels carry the same raised message limits as the server, so a 1 MiB
  replica fetch or a large produce is never refused by a default 4 MiB cap.
* Reconnect backoff is short (a local cluster restarts nodes in about a
  second; gRPC's default backoff grows to two minutes).
* Only the event loop thread uses this object.
"""

from __future__ import annotations

from typing import Callable

import grpc

from proto import shoal_pb2_grpc


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.enable_retries", 0),
        # Keepalive lets a follower notice a SIGSTOPped/partitioned leader even
        # when a long-poll would otherwise hang until its deadline.
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
    ]


class Peers:
    """Cached stubs keyed by node id; addresses come from the cluster metadata."""

    def __init__(self, address_of: Callable[[int], str | None], max_message_bytes: int) -> None:
        self._address_of = address_of
        self._options = channel_options(max_message_bytes)
        self._channels: dict[int, tuple[str, grpc.aio.Channel]] = {}
        self._stubs: dict[int, tuple[shoal_pb2_grpc.InternalStub, shoal_pb2_grpc.BrokerStub]] = {}

    def _stubs_for(self, node_id: int) -> tuple[shoal_pb2_grpc.InternalStub, shoal_pb2_grpc.BrokerStub]:
        address = self._address_of(node_id)
        if address is None:
            raise KeyError(f"node {node_id} has no known address (not registered)")
        cached = self._channels.get(node_id)
        if cached is not None and cached[0] == address:
            return self._stubs[node_id]
        if cached is not None:
            # The close is awaited in the background; in-flight calls on the old
            # channel fail with UNAVAILABLE and their callers retry.
            import asyncio

            asyncio.get_running_loop().create_task(cached[1].close())
        channel = grpc.aio.insecure_channel(address, options=self._options)
        self._channels[node_id] = (address, channel)
        stubs = (shoal_pb2_grpc.InternalStub(channel), shoal_pb2_grpc.BrokerStub(channel))
        self._stubs[node_id] = stubs
        return stubs

    def internal(self, node_id: int) -> shoal_pb2_grpc.InternalStub:
        return self._stubs_for(node_id)[0]

    def broker(self, node_id: int) -> shoal_pb2_grpc.BrokerStub:
        return self._stubs_for(node_id)[1]

    def internal_at(self, address: str) -> shoal_pb2_grpc.InternalStub:
        """A stub for an address not (yet) in the metadata, e.g. a quorum peer at start."""
        key = -hash(address) - 2  # never a real node id (those are >= 0)
        cached = self._channels.get(key)
        if cached is None:
            channel = grpc.aio.insecure_channel(address, options=self._options)
            self._channels[key] = (address, channel)
            self._stubs[key] = (shoal_pb2_grpc.InternalStub(channel), shoal_pb2_grpc.BrokerStub(channel))
        return self._stubs[key][0]

    async def close(self) -> None:
        channels = [channel for _, channel in self._channels.values()]
        self._channels.clear()
        self._stubs.clear()
        for channel in channels:
            await channel.close(grace=None)
