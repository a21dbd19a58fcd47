"""Network namespaces for the chaos cluster: one namespace per node, a bridge, iptables cuts.

Rules (reliability-plan §4, "Network")
--------------------------------------
* Everything this module creates carries one run tag: namespaces
  `shoal-chaos-<tag>-n<id>`, a bridge `shbr<tag>`, veth host ends `shv<tag>n<id>`.
  `NetworkLab.close()` removes exactly those, and `remove_stale_labs()` removes
  leftovers of an earlier run that died (only names with the `shoal-chaos-`
  prefix, never anything else). The root namespace's iptables are never touched.
* Addresses: a private /24 `10.213.<k>.0` that no interface or route of this
  machine already uses; the bridge (the harness, in the root namespace) is `.1`,
  node `i` is `.(10 + i)`. Traffic therefore stays between this machine's root
  namespace and the namespaces created here.
* A partition is a set of iptables DROP rules *inside* the node namespaces
  (INPUT from and OUTPUT to the cut peers), so established TCP connections stall
  exactly as in a real partition (verified in reliability-plan §4); `heal()` flushes
  them. `cut_client(node)` drops the harness's traffic to one node only.
* Needs root, `ip` and `iptables`. `available()` says whether this machine can
  do it (and why not), so that callers fall back to process faults with a note.

Theory of operation
-------------------
Each node namespace gets a veth pair: one end is renamed `eth0` inside the
namespace, the other is enslaved to the bridge. Loopback is brought up inside
every namespace because a node may bind helpers (metrics) to 127.0.0.1. Commands
run through `subprocess.run([...], check=True)` with no shell, and every command
that failed during cleanup is collected rather than raised, so that one missing
link does not leave the rest of the lab behind.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

NAMESPACE_PREFIX = "shoal-chaos-"
_SUBNET_SECOND_OCTET = 213
_NODE_HOST_OFFSET = 10
_COMMAND_TIMEOUT_S = 10


class NetworkLabError(RuntimeError):
    """A namespace, link or rule could not be set up."""


def _run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S)
    if check and result.returncode != 0:
        raise NetworkLabError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def available() -> tuple[bool, str]:
    """Whether namespaces with iptables partitions can be used here, and why not."""
    if os.geteuid() != 0:
        return False, "network partitions need root (ip netns, iptables)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return False, f"`{tool}` is not installed (apt-get install -y iproute2 iptables)"
    probe = f"{NAMESPACE_PREFIX}probe-{secrets.token_hex(2)}"
    try:
        _run(["ip", "netns", "add", probe])
        try:
            _run(["ip", "netns", "exec", probe, "iptables", "-A", "INPUT", "-s", "10.213.255.9", "-j", "DROP"])
        finally:
            _run(["ip", "netns", "delete", probe], check=False)
    except (NetworkLabError, subprocess.TimeoutExpired) as error:
        return False, f"cannot create a namespace with iptables rules: {error}"
    return True, "network namespaces and iptables work"


def _used_networks() -> list[ipaddress.IPv4Network]:
    used = []
    for line in _run(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            used.append(ipaddress.ip_network(parts[parts.index("inet") + 1], strict=False))
    for line in _run(["ip", "-4", "route", "show"]).stdout.splitlines():
        destination = line.split()[0]
        if destination != "default":
            used.append(ipaddress.ip_network(destination, strict=False))
    return used


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    # Random order: two runs started at once (pytest -n 2) rarely race for one subnet,
    # and `ip addr add` on the bridge fails loudly if they do.
    for third in sorted(range(256), key=lambda _: secrets.randbelow(1 << 30)):
        candidate = ipaddress.ip_network(f"10.{_SUBNET_SECOND_OCTET}.{third}.0/24")
        if not any(candidate.overlaps(network) for network in used):
            return candidate
    raise NetworkLabError(f"no free 10.{_SUBNET_SECOND_OCTET}.x.0/24 subnet")


@dataclass
class NetworkLab:
    """One namespace per node behind one bridge; create with `NetworkLab.create(node_ids)`."""

    tag: str
    subnet: ipaddress.IPv4Network
    node_ids: list[int]
    _created_namespaces: list[str] = field(default_factory=list)
    _bridge_created: bool = False
    # node -> peers (node ids, or "client" for the bridge address) it currently drops.
    cuts: dict[int, set[int | str]] = field(default_factory=dict)
    closed: bool = False

    # ---- naming ------------------------------------------------------------------------

    @property
    def bridge(self) -> str:
        return f"shbr{self.tag}"

    def namespace(self, node_id: int) -> str:
        return f"{NAMESPACE_PREFIX}{self.tag}-n{node_id}"

    def veth(self, node_id: int) -> str:
        return f"shv{self.tag}n{node_id}"

    @property
    def client_address(self) -> str:
        """The harness's address, on the bridge in the root namespace."""
        return str(self.subnet.network_address + 1)

    def address(self, node_id: int) -> str:
        return str(self.subnet.network_address + _NODE_HOST_OFFSET + node_id)

    def exec_prefix(self, node_id: int) -> list[str]:
        """Prepend to a command to run it inside the node's namespace.

        `ip netns exec` execs the command in place, so the pid of the started
        process is the pid of the command: signals reach the node itself.
        """
        return ["ip", "netns", "exec", self.namespace(node_id)]

    # ---- lifecycle -----------------------------------------------------------------------

    @classmethod
    def create(cls, node_ids: Iterable[int]) -> NetworkLab:
        lab = cls(tag=secrets.token_hex(2), subnet=_free_subnet(), node_ids=sorted(node_ids))
        try:
            lab._build()
        except BaseException:
            lab.close()
            raise
        return lab

    def _build(self) -> None:
        if max(self.node_ids) + _NODE_HOST_OFFSET >= 254:
            raise NetworkLabError("node ids are too large for one /24")
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._bridge_created = True
        _run(["ip", "addr", "add", f"{self.client_address}/{self.subnet.prefixlen}", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for node_id in self.node_ids:
            namespace = self.namespace(node_id)
            _run(["ip", "netns", "add", namespace])
            self._created_namespaces.append(namespace)
            peer = f"shp{self.tag}n{node_id}"
            _run(["ip", "link", "add", self.veth(node_id), "type", "veth", "peer", "name", peer])
            _run(["ip", "link", "set", peer, "netns", namespace])
            _run(["ip", "link", "set", self.veth(node_id), "master", self.bridge])
            _run(["ip", "link", "set", self.veth(node_id), "up"])
            inside = self.exec_prefix(node_id)
            _run(inside + ["ip", "link", "set", peer, "name", "eth0"])
            _run(inside + ["ip", "addr", "add", f"{self.address(node_id)}/{self.subnet.prefixlen}", "dev", "eth0"])
            _run(inside + ["ip", "link", "set", "eth0", "up"])
            _run(inside + ["ip", "link", "set", "lo", "up"])
            self.cuts[node_id] = set()

    def close(self) -> list[str]:
        """Remove every namespace, link and rule of this lab; returns what could not be removed."""
        problems: list[str] = []
        for namespace in reversed(self._created_namespaces):
            # Deleting the namespace destroys its veth end (and so the pair) and its rules.
            result = _run(["ip", "netns", "delete", namespace], check=False)
            if result.returncode != 0 and namespace in _list_namespaces():
                problems.append(f"netns {namespace}: {result.stderr.strip()}")
        self._created_namespaces.clear()
        for node_id in self.node_ids:
            # A veth whose namespace move failed is still in the root namespace.
            if _link_exists(self.veth(node_id)):
                _run(["ip", "link", "delete", self.veth(node_id)], check=False)
            peer = f"shp{self.tag}n{node_id}"
            if _link_exists(peer):
                _run(["ip", "link", "delete", peer], check=False)
        if self._bridge_created:
            result = _run(["ip", "link", "delete", self.bridge], check=False)
            if result.returncode != 0 and _link_exists(self.bridge):
                problems.append(f"bridge {self.bridge}: {result.stderr.strip()}")
            self._bridge_created = False
        self.closed = True
        return problems

    def __enter__(self) -> NetworkLab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- faults --------------------------------------------------------------------------

    def _drop(self, node_id: int, peer_address: str) -> None:
        inside = self.exec_prefix(node_id)
        _run(inside + ["iptables", "-A", "INPUT", "-s", peer_address, "-j", "DROP"])
        _run(inside + ["iptables", "-A", "OUTPUT", "-d", peer_address, "-j", "DROP"])

    def partition(self, groups: Sequence[Iterable[int]]) -> None:
        """Cut every link between nodes of different groups (nodes in no group are isolated).

        The harness (bridge address) keeps reaching every node: this is a
        partition between brokers, as Jepsen's `partition` nemesis does.
        """
        group_of: dict[int, int] = {}
        for position, group in enumerate(groups):
            for node_id in group:
                group_of[node_id] = position
        for node_id in self.node_ids:
            for peer in self.node_ids:
                if peer == node_id:
                    continue
                same = node_id in group_of and group_of.get(peer) == group_of[node_id]
                if not same and peer not in self.cuts[node_id]:
                    self._drop(node_id, self.address(peer))
                    self.cuts[node_id].add(peer)

    def cut_links(self, links: Iterable[tuple[int, int]]) -> None:
        """Cut individual node pairs in both directions (e.g. a bridge topology A-B-C)."""
        for left, right in links:
            for node_id, peer in ((left, right), (right, left)):
                if peer not in self.cuts[node_id]:
                    self._drop(node_id, self.address(peer))
                    self.cuts[node_id].add(peer)

    def cut_client(self, node_id: int) -> None:
        """Drop the harness's traffic to and from one node (a client-to-leader cut)."""
        if "client" not in self.cuts[node_id]:
            self._drop(node_id, self.client_address)
            self.cuts[node_id].add("client")

    def heal(self) -> None:
        for node_id in self.node_ids:
            if self.cuts[node_id]:
                _run(self.exec_prefix(node_id) + ["iptables", "-F"])
                self.cuts[node_id].clear()

    def rules(self, node_id: int) -> str:
        """The node namespace's filter rules, for reports and tests."""
        return _run(self.exec_prefix(node_id) + ["iptables", "-S"]).stdout


def _list_namespaces() -> list[str]:
    result = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", name], check=False).returncode == 0


def remove_stale_labs(older_than_tags: Iterable[str] = ()) -> list[str]:
    """Remove namespaces and bridges left by chaos runs that died without cleaning up.

    Only names this module creates are touched. `older_than_tags` lists tags of
    labs that are alive in this process and must be kept. Returns what was removed.
    """
    keep = set(older_than_tags)
    removed = []
    for namespace in _list_namespaces():
        if namespace.startswith(NAMESPACE_PREFIX):
            tag = namespace[len(NAMESPACE_PREFIX) :].split("-")[0]
            if tag not in keep:
                _run(["ip", "netns", "delete", namespace], check=False)
                removed.append(namespace)
    links = _run(["ip", "-o", "link", "show", "type", "bridge"], check=False).stdout.splitlines()
    for line in links:
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith("shbr") and name[4:] not in keep:
            _run(["ip", "link", "delete", name], check=False)
            removed.append(name)
    return removed
