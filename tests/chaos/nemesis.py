"""The nemesis: the faults a chaos run injects, each recorded in the history as it happens.

Rules (reliability-plan §4 and §6.2)
-----------------------------------
* Every fault and every undo is one history event, written *after* the fault
  took effect (a kill after the process is reaped, a pause after SIGSTOP was
  sent) and *before* the next client operation can observe it, so that the
  checker's "was anything disrupted between A and B" is conservative:
  - `kill` / `pause`: `{"targets": [node], "role": ...}`; `restart` / `resume`:
    `{"targets": [node]}`;
  - `kill_all`: `{"targets": [every node]}`, followed by one `restart` per node;
  - `partition`: `{"targets": [...], "kind": "isolate"|"halves"|"bridge"|"client",
    "groups" | "links"}`; `heal`: `{"targets": [...], "what": ...}`;
  - `clock`: `{"targets": [node], "offset_s": x}` for a jump; putting the clock
    back is a `heal` with `"what": "clock"` (it undoes a fault).
* At most a minority (one of three) is down or paused at a time, except in
  `kill_all`; a fault that would break this is skipped, not queued.
* Targets are weighted towards the nodes that matter (reliability-plan §6.2):
  partition leaders, the active controller and the share coordinator count
  more than a plain follower. The weights come from `Roles`, observed just
  before the choice; if roles cannot be read (no quorum), the choice is uniform.
* `heal_all()` undoes everything (resume, heal the network, put clocks back,
  restart dead nodes) and ends with a `heal` event `{"what": "final"}`: the
  checker's progress deadline starts there.

Theory of operation
-------------------
The nemesis acts on a `NodeControl` (the chaos cluster, or plain processes in
the nemesis self-tests) and, for partitions, on a `NetworkLab`. It keeps its
own view of which nodes are down, paused, cut off or skewed, so that undoing
is exact. Scenario schedules (`scenarios.py`) call these primitives from one
nemesis thread; the primitives themselves are not re-entrant.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tests.chaos.history import HistoryRecorder
from tests.chaos.netns import NetworkLab


class NodeControl(Protocol):
    """What the nemesis needs from a cluster."""

    @property
    def node_ids(self) -> list[int]: ...

    def kill(self, node_id: int) -> None: ...

    def start_node(self, node_id: int) -> None: ...

    def pause(self, node_id: int) -> None: ...

    def resume(self, node_id: int) -> None: ...

    def alive(self, node_id: int) -> bool: ...

    def set_clock_offset(self, node_id: int, offset_s: float) -> None: ...


@dataclass(frozen=True)
class Roles:
    """Who leads what, as far as the cluster could tell just now."""

    partition_leaders: dict[int, int] = field(default_factory=dict)  # workload partition -> node
    controller: int | None = None
    coordinators: frozenset[int] = frozenset()  # share coordinator (and group coordinator) nodes

    def weight(self, node_id: int) -> int:
        weight = 1
        weight += 2 * sum(1 for leader in self.partition_leaders.values() if leader == node_id)
        weight += 2 if self.controller == node_id else 0
        weight += 2 if node_id in self.coordinators else 0
        return weight

    def describe(self, node_id: int) -> str:
        parts = [f"leader:{p}" for p, leader in sorted(self.partition_leaders.items()) if leader == node_id]
        if self.controller == node_id:
            parts.append("controller")
        if node_id in self.coordinators:
            parts.append("coordinator")
        return ",".join(parts) or "follower"


class Nemesis:
    def __init__(
        self,
        control: NodeControl,
        recorder: HistoryRecorder,
        rng: random.Random,
        *,
        lab: NetworkLab | None = None,
        roles: Callable[[], Roles] = Roles,
        wait_ready: Callable[[int], None] | None = None,
        clock_nodes: Sequence[int] = (),
    ) -> None:
        self.control = control
        self.recorder = recorder
        self.rng = rng
        self.lab = lab
        self.roles = roles
        # Called after a restart, so that the next fault does not hit a node that
        # is still recovering (which would test nothing but the restart itself).
        self.wait_ready = wait_ready
        self.clock_nodes = list(clock_nodes)
        self.down: set[int] = set()
        self.paused: set[int] = set()
        self.skewed: set[int] = set()
        self.partitioned = False
        self.faults = 0

    # ---- choosing targets ------------------------------------------------------------------

    def _read_roles(self) -> Roles:
        try:
            return self.roles()
        except Exception:  # noqa: BLE001 - no quorum or no answer: choose uniformly
            return Roles()

    def healthy(self) -> list[int]:
        return [node for node in self.control.node_ids if node not in self.down and node not in self.paused]

    def can_disable_one(self) -> bool:
        # A minority only: with 3 nodes, one may be down or paused at a time.
        return len(self.down | self.paused) < (len(self.control.node_ids) - 1) // 2

    def pick(self, candidates: Sequence[int] | None = None) -> tuple[int, str]:
        """A weighted target among healthy nodes, and the roles it held."""
        candidates = list(candidates if candidates is not None else self.healthy())
        if not candidates:
            raise RuntimeError("no healthy node to target")
        roles = self._read_roles()
        weights = [roles.weight(node) for node in candidates]
        node = self.rng.choices(candidates, weights=weights, k=1)[0]
        return node, roles.describe(node)

    # ---- process faults ----------------------------------------------------------------------

    def kill(self, node_id: int, role: str = "") -> None:
        self.control.kill(node_id)
        self.down.add(node_id)
        self.paused.discard(node_id)
        self.faults += 1
        self.recorder.event("kill", {"targets": [node_id], "role": role})

    def restart(self, node_id: int, *, wait: bool = True) -> None:
        self.control.start_node(node_id)
        self.down.discard(node_id)
        self.recorder.event("restart", {"targets": [node_id]})
        if wait and self.wait_ready is not None:
            try:
                self.wait_ready(node_id)
            except (TimeoutError, AssertionError) as error:
                # Not ready in time is a finding for the report, not a harness crash.
                self.recorder.event("restart_slow", {"targets": [node_id], "error": str(error)[:300]})

    def pause(self, node_id: int, role: str = "") -> None:
        self.control.pause(node_id)
        self.paused.add(node_id)
        self.faults += 1
        self.recorder.event("pause", {"targets": [node_id], "role": role})

    def resume(self, node_id: int) -> None:
        self.control.resume(node_id)
        self.paused.discard(node_id)
        self.recorder.event("resume", {"targets": [node_id]})

    def kill_all(self) -> None:
        targets = list(self.control.node_ids)
        for node_id in targets:
            self.control.kill(node_id)
        self.down.update(targets)
        self.paused.clear()
        self.faults += 1
        self.recorder.event("kill_all", {"targets": targets})

    def restart_all(self, max_stagger_s: float = 3.0) -> None:
        """Restart every dead node in random order, 0..max_stagger_s apart (§6.2 S5)."""
        order = sorted(self.down)
        self.rng.shuffle(order)
        for position, node_id in enumerate(order):
            if position:
                time.sleep(self.rng.uniform(0.0, max_stagger_s))
            self.restart(node_id, wait=False)
        if self.wait_ready is not None:
            for node_id in order:
                try:
                    self.wait_ready(node_id)
                except (TimeoutError, AssertionError) as error:
                    self.recorder.event("restart_slow", {"targets": [node_id], "error": str(error)[:300]})

    # ---- network faults ----------------------------------------------------------------------

    def _need_lab(self) -> NetworkLab:
        if self.lab is None:
            raise RuntimeError("network faults need a NetworkLab (root, ip, iptables)")
        return self.lab

    def partition(self, kind: str, target: int | None = None, role: str = "") -> None:
        """isolate: target alone | halves: a random node alone | bridge: A-C cut, B sees both |
        client: the harness cannot reach target (brokers still can)."""
        lab = self._need_lab()
        nodes = list(self.control.node_ids)
        if target is None:
            target, role = self.pick()
        value: dict[str, object] = {"kind": kind, "role": role}
        if kind in ("isolate", "halves"):
            if kind == "halves":
                target = self.rng.choice(nodes)
                role = ""
            rest = [node for node in nodes if node != target]
            groups = [[target], rest]
            lab.partition(groups)
            value.update(targets=[target], groups=groups)
        elif kind == "bridge":
            middle = target
            ends = [node for node in nodes if node != middle]
            lab.cut_links([(ends[0], ends[1])])
            value.update(targets=ends, links=[ends], bridge=middle)
        elif kind == "client":
            lab.cut_client(target)
            value.update(targets=[target])
        else:
            raise ValueError(f"unknown partition kind {kind!r}")
        self.partitioned = True
        self.faults += 1
        self.recorder.event("partition", value)

    def heal_network(self) -> None:
        if not self.partitioned:
            return
        self._need_lab().heal()
        self.partitioned = False
        self.recorder.event("heal", {"targets": list(self.control.node_ids), "what": "network"})

    # ---- clock faults ---------------------------------------------------------------------

    def clock(self, node_id: int, offset_s: float) -> None:
        self.control.set_clock_offset(node_id, offset_s)
        self.skewed.add(node_id)
        self.faults += 1
        self.recorder.event("clock", {"targets": [node_id], "offset_s": offset_s})

    def reset_clocks(self) -> None:
        for node_id in sorted(self.skewed):
            self.control.set_clock_offset(node_id, 0.0)
            self.recorder.event("heal", {"targets": [node_id], "what": "clock"})
        self.skewed.clear()

    # ---- undo everything ---------------------------------------------------------------------

    def heal_all(self) -> None:
        for node_id in sorted(self.paused):
            self.resume(node_id)
        self.heal_network()
        self.reset_clocks()
        for node_id in sorted(self.down):
            self.restart(node_id, wait=False)
        if self.wait_ready is not None:
            for node_id in self.control.node_ids:
                try:
                    self.wait_ready(node_id)
                except (TimeoutError, AssertionError) as error:
                    self.recorder.event("restart_slow", {"targets": [node_id], "error": str(error)[:300]})
        self.recorder.event("heal", {"targets": list(self.control.node_ids), "what": "final"})
