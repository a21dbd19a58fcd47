"""Run chaos scenarios against a real 3-node shoal cluster and check what happened.

Usage::

    python -m tests.chaos.run --scenario kill [--scenario pause ...] | --all
                              [--soak] [--out DIR] [--seed N] [--fault-seconds S]

Rules
-----
* One run = one scenario = one directory under `--out` (default
  `var/chaos/<UTC timestamp>/`): `history.jsonl` (every op, flushed as it
  happens), `report.json` and `summary.txt` (the checker's verdict, anomalies
  with their history slices, coverage), `run.json` (scenario, seed, settings,
  timings, notes such as a network fallback) and `cluster/` (each node's data
  directory and stdout/stderr).
* Phases (reliability-plan §6.1): warm-up, faults, heal everything, quiet,
  drain (producers stop; fresh members accept everything until every share
  partition's start offset reaches its high watermark, or the drain times out),
  final dumps, check, report.
* Final dumps: while the cluster still runs, each node answers for the share
  partitions it leads (start offset, runs, high watermark) and the freshest
  metadata gives each partition's ISR; then every node is stopped (SIGTERM,
  SIGKILL after 20 s) and every replica's log is read from its data directory.
  A replica outside the ISR is left out of the dumps (a lagging follower is not
  a divergent one), and the report notes it.
* Everything started here is torn down in `finally`, in order: workload threads,
  node processes, then the network namespaces, bridge and rules.
* Exit status: 0 every run passed, 1 some run found a violation, 2 otherwise
  (a run invalid by coverage, or undecided).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import signal
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from client.consumer import decode_batches
from node.log import LogConfig, PartitionLog
from proto import shoal_pb2
from tests.chaos import netns
from tests.chaos.checker import CheckResult, check
from tests.chaos.cluster import ChaosCluster, libfaketime_path, start_chaos_cluster
from tests.chaos.history import HistoryRecorder, load_history
from tests.chaos.nemesis import Nemesis
from tests.chaos.report import summary_text, write_report
from tests.chaos.scenarios import SCENARIOS, Scenario, scaled_gates
from tests.chaos.workload import Workload, WorkloadConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_NAMES = {0: "AVAILABLE", 1: "ACQUIRED", 2: "ACKNOWLEDGED", 4: "ARCHIVED"}


@dataclass
class Timings:
    warmup_s: float = 5.0
    fault_s: float = 120.0
    quiet_s: float = 10.0
    drain_s: float = 45.0


def node_settings(config: WorkloadConfig) -> dict[str, str]:
    """Short timers so that a minute holds many lock expiries, failovers and sessions."""
    return {
        "group.share.record.lock.duration.ms": str(config.lock_duration_ms),
        "group.share.min.record.lock.duration.ms": str(min(1000, config.lock_duration_ms)),
        "group.share.delivery.count.limit": str(config.delivery_limit),
        "group.share.session.timeout.ms": "6000",
        "group.share.min.session.timeout.ms": "3000",
        "group.share.heartbeat.interval.ms": "1000",
        "group.share.min.heartbeat.interval.ms": "500",
        "group.consumer.session.timeout.ms": "6000",
        "group.consumer.min.session.timeout.ms": "3000",
        "group.consumer.heartbeat.interval.ms": "1000",
        "group.consumer.min.heartbeat.interval.ms": "500",
        "broker.session.timeout.ms": "2000",
        "broker.heartbeat.interval.ms": "250",
    }


@dataclass
class RunOutcome:
    scenario: str
    out_dir: Path
    valid: bool | str
    notes: list[str] = field(default_factory=list)
    result: CheckResult | None = None
    error: str | None = None


# ---- final dumps -------------------------------------------------------------------------


def _share_states(cluster: ChaosCluster, config: WorkloadConfig) -> dict[int, dict[int, shoal_pb2.SharePartitionState]]:
    """node -> partition -> the share state that node answers for (it leads the partition)."""
    partitions = [shoal_pb2.TopicPartition(topic=config.topic, partition=p) for p in range(config.partitions)]
    found: dict[int, dict[int, Any]] = {}
    for node_id in cluster.node_ids:
        try:
            response = cluster.broker(node_id).DescribeSharePartitions(
                shoal_pb2.DescribeSharePartitionsRequest(group_id=config.share_group, partitions=partitions),
                timeout=5,
            )
        except grpc.RpcError:
            continue
        for state in response.partitions:
            if state.error_code == 0 and state.start_offset >= 0:
                found.setdefault(node_id, {})[state.partition] = state
    return found


def _isr(cluster: ChaosCluster, topic: str) -> dict[int, list[int]]:
    best = None
    for node_id in cluster.node_ids:
        try:
            response = cluster.describe_cluster(node_id, timeout_s=3)
        except grpc.RpcError:
            continue
        if best is None or (response.raft_term, response.raft_commit_index) > (best.raft_term, best.raft_commit_index):
            best = response
    if best is None:
        return {}
    return {p.partition: list(p.isr) for p in best.partitions if p.topic == topic}


def read_replica_log(data_dir: Path, topic: str, partition: int) -> list[list[Any]] | None:
    """[[offset, value], ...] of one replica's log on disk (the node must be stopped)."""
    directory = data_dir / "logs" / f"{topic}-{partition}"
    if not directory.is_dir():
        return None
    log = PartitionLog(directory, LogConfig(), now_ms=int(time.time() * 1000))
    try:
        entries: list[list[Any]] = []
        offset = log.log_start_offset
        end = log.log_end_offset
        while offset < end:
            data = log.read(offset, 1 << 20, end)
            if not data:
                break
            last = offset
            for header, records in decode_batches(data, check_crcs=True):
                last = max(last, header.last_offset)
                for record in records or []:
                    value = record.value.decode("utf-8", "backslashreplace") if record.value is not None else None
                    entries.append([record.offset, value])
            offset = last + 1
        return entries
    finally:
        log.close()


def final_dumps(
    cluster: ChaosCluster, config: WorkloadConfig, recorder: HistoryRecorder, notes: list[str]
) -> None:
    states = _share_states(cluster, config)
    isr = _isr(cluster, config.topic)
    high_watermarks = {p: state.high_watermark for by_p in states.values() for p, state in by_p.items()}
    for partition in range(config.partitions):
        if partition not in high_watermarks:
            notes.append(f"no node answered for the share state of partition {partition} at the final dump")
    for node_id in cluster.node_ids:
        if cluster.alive(node_id):
            try:
                cluster.stop(node_id, timeout_s=20)
            except AssertionError as error:
                notes.append(str(error))
    for node_id in cluster.node_ids:
        dump: dict[str, Any] = {}
        for partition in range(config.partitions):
            in_isr = node_id in isr.get(partition, [])
            if not in_isr:
                notes.append(f"node {node_id} was not in the ISR of partition {partition} at the end; its log is not compared")
                continue
            log = read_replica_log(cluster.nodes[node_id].data_dir, config.topic, partition)
            if log is None:
                notes.append(f"node {node_id} has no log directory for partition {partition}")
                continue
            state = states.get(node_id, {}).get(partition)
            dump[str(partition)] = {
                "log": log,
                "high_watermark": high_watermarks.get(partition),
                "start_offset": state.start_offset if state is not None else None,
                "states": (
                    [
                        [run.first_offset, run.last_offset, STATE_NAMES.get(run.state, "ARCHIVED"), run.delivery_count]
                        for run in state.runs
                    ]
                    if state is not None
                    else None
                ),
            }
        recorder.event("final_dump", {"node": node_id, "partitions": dump}, process="dump", node=node_id)


# ---- one run ------------------------------------------------------------------------------


def run_scenario(
    scenario: Scenario,
    out_dir: Path,
    *,
    seed: int,
    timings: Timings,
    gates: Mapping[str, int],
    extra_env: Mapping[str, str] | None = None,
    workload_overrides: Mapping[str, Any] | None = None,
) -> RunOutcome:
    out_dir.mkdir(parents=True, exist_ok=False)
    rng = random.Random(seed)
    notes: list[str] = []
    config = WorkloadConfig(**{**dict(scenario.workload), **dict(workload_overrides or {})})
    network = False
    lab: netns.NetworkLab | None = None
    if scenario.needs_network:
        network, why = netns.available()
        if not network:
            notes.append(f"{scenario.fallback_note} ({why})")
    clock_nodes = scenario.clock_nodes
    if clock_nodes and libfaketime_path() is None:
        notes.append("libfaketime is not installed (apt-get install -y faketime): clock faults were skipped")
        clock_nodes = ()
    run_info: dict[str, Any] = {
        "scenario": scenario.name,
        "description": scenario.description,
        "seed": seed,
        "timings": asdict(timings),
        "gates": dict(gates),
        "workload": asdict(config),
        "extra_env": dict(extra_env or {}),
        "network_namespaces": network,
        "clock_nodes": list(clock_nodes),
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    history_path = out_dir / "history.jsonl"
    recorder = HistoryRecorder(history_path)
    cluster: ChaosCluster | None = None
    workload: Workload | None = None
    outcome = RunOutcome(scenario.name, out_dir, "unknown", notes)
    phase_times: dict[str, float] = {}
    started = time.monotonic()
    try:
        if network:
            lab = netns.NetworkLab.create([1, 2, 3])
            run_info["subnet"] = str(lab.subnet)
        cluster = start_chaos_cluster(
            3,
            out_dir / "cluster",
            node_settings(config),
            lab=lab,
            clock_nodes=clock_nodes,
            extra_env=dict(extra_env or {}),
        )
        workload = Workload(
            bootstrap=cluster.bootstrap,
            node_ids=cluster.node_ids,
            broker_stub=cluster.broker,
            recorder=recorder,
            config=config,
            seed=rng.randrange(1 << 30),
        )
        workload.setup()
        workload.start()
        nemesis = Nemesis(
            cluster,
            recorder,
            random.Random(rng.randrange(1 << 30)),
            lab=lab,
            roles=workload.roles,
            wait_ready=lambda node_id: cluster.wait_node_ready(node_id, 30.0),
            clock_nodes=clock_nodes,
        )
        time.sleep(timings.warmup_s)
        phase_times["faults_start"] = time.monotonic() - started
        if clock_nodes or scenario.clock_nodes == ():
            scenario.schedule(nemesis, rng, time.monotonic() + timings.fault_s, network)
        else:
            # No libfaketime: the clock scenario keeps its kills only.
            from tests.chaos.scenarios import kill_schedule

            kill_schedule(nemesis, rng, time.monotonic() + timings.fault_s, network)
        phase_times["heal_start"] = time.monotonic() - started
        nemesis.heal_all()
        time.sleep(timings.quiet_s)
        phase_times["drain_start"] = time.monotonic() - started
        workload.stop_producers()
        if not workload.drain(timings.drain_s):
            notes.append(f"the drain did not finish within {timings.drain_s:.0f} s")
        stuck = workload.stop()
        if stuck:
            notes.append(f"workload threads did not stop: {stuck}")
        phase_times["dump_start"] = time.monotonic() - started
        final_dumps(cluster, config, recorder, notes)
        run_info["workload_counters"] = asdict(workload.counters)
    except Exception as error:  # noqa: BLE001 - a harness failure is reported, never hidden
        outcome.error = "".join(traceback.format_exception(error))
        notes.append(f"harness error: {error!r}")
        recorder.event("harness_error", {"error": repr(error)[:1000]}, process="runner")
    finally:
        if workload is not None:
            workload.stop(timeout_s=10)
        if cluster is not None:
            cluster.close()
        if lab is not None:
            problems = lab.close()
            if problems:
                notes.append(f"network cleanup problems: {problems}")
        recorder.close()
    phase_times["end"] = time.monotonic() - started
    run_info["phase_times_s"] = {key: round(value, 1) for key, value in phase_times.items()}
    run_info["load_average"] = os.getloadavg()
    history = load_history(history_path)
    result = check(
        history,
        delivery_limit=config.delivery_limit,
        lock_duration_ms=config.lock_duration_ms,
        coverage_gates=gates,
    )
    result.notes.extend(notes)
    if outcome.error is not None and result.valid is True:
        result.valid = "unknown"
    write_report(result, history, out_dir)
    run_info["verdict"] = result.valid
    run_info["notes"] = result.notes
    (out_dir / "run.json").write_text(json.dumps(run_info, indent=2, default=str) + "\n")
    outcome.valid = result.valid
    outcome.result = result
    return outcome


# ---- command line -------------------------------------------------------------------------


def default_out_dir() -> Path:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return REPO_ROOT / "var" / "chaos" / stamp


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", action="append", default=[], choices=sorted(SCENARIOS))
    parser.add_argument("--all", action="store_true", help="every scenario, in the order of reliability-plan §6.2")
    parser.add_argument("--soak", action="store_true", help="long fault windows (nightly)")
    parser.add_argument("--out", type=Path, default=None, help="where the run directories go")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--fault-seconds", type=float, default=None, help="override the fault window")
    parser.add_argument(
        "--clean-stale-namespaces",
        action="store_true",
        help="first remove namespaces/bridges left by chaos runs that were killed (only shoal-chaos-* names)",
    )
    arguments = parser.parse_args(argv)
    names = list(SCENARIOS) if arguments.all else arguments.scenario
    if not names:
        parser.error("name a --scenario or pass --all")
    if arguments.clean_stale_namespaces and os.geteuid() == 0:
        removed = netns.remove_stale_labs()
        print(f"removed stale chaos network objects: {removed}")
    out_root = arguments.out or default_out_dir()
    seed = arguments.seed if arguments.seed is not None else random.randrange(1 << 30)
    print(f"chaos: scenarios {names}, seed {seed}, output {out_root}", flush=True)

    # SIGTERM (e.g. CI timeout) must still run the finally blocks that remove namespaces.
    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    outcomes = []
    for position, name in enumerate(names):
        scenario = SCENARIOS[name]
        fault_s = arguments.fault_seconds or (scenario.soak_fault_s if arguments.soak else scenario.fault_s)
        timings = Timings(fault_s=fault_s)
        gates = scaled_gates(fault_s) if fault_s < 120 else dict(scaled_gates(120))
        outcome = run_scenario(
            scenario, out_root / name, seed=seed + position, timings=timings, gates=gates
        )
        outcomes.append(outcome)
        assert outcome.result is not None
        print(summary_text(outcome.result, load_history(outcome.out_dir / "history.jsonl")), flush=True)
        print(f"== {name}: verdict {outcome.valid} ({outcome.out_dir})", flush=True)
    print("chaos summary:")
    for outcome in outcomes:
        print(f"  {outcome.scenario:10s} {outcome.valid!s:8s} {outcome.out_dir}")
    if all(outcome.valid is True for outcome in outcomes):
        return 0
    if any(outcome.valid is False for outcome in outcomes):
        return 1
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
