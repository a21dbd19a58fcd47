"""``shoal node`` (run one node) and ``shoal cluster up|status|down`` (a local cluster).

``cluster up`` starts ``python -m node`` processes: node ids 1..n, gRPC ports
P..P+n-1, Raft ports P+100.., metrics ports P+200... Everything lives in the
data directory: ``node-<id>/`` (data), ``node-<id>.log`` (output),
``node-<id>.pid``, ``cluster.json`` (addresses and pids, read by ``cluster
down``) and ``prometheus.yml`` (a scrape config listing every node's metrics
endpoint). In the foreground, Ctrl-C (or SIGTERM) stops every node with
SIGTERM — a controlled shutdown — and waits for them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from rich.progress import Progress
from rich.table import Table

from client.admin import Admin
from client.cli._common import CliContext, handle_errors, parse_pairs, pass_ctx
from client.errors import KafkaTimeoutError, ShoalError


@click.command("node", context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def node(args: tuple[str, ...]) -> None:
    """Run a node in this process: python -m node ARGS (try: shoal node --help)."""
    os.execv(sys.executable, [sys.executable, "-m", "node", *args])


@click.group("cluster")
def cluster() -> None:
    """Start, inspect and stop a local multi-node cluster."""


def _node_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return True


def _is_our_node(pid: int) -> bool:
    """Guard against a recycled pid: the process must be a `python -m node`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _node_alive(pid)
    return b"-m" in cmdline and b"node" in cmdline


def _stop_pids(pids: dict[int, int], timeout_s: float) -> dict[int, str]:
    """SIGTERM every node, wait up to ``timeout_s``, SIGKILL stragglers. Returns how each ended."""
    outcome: dict[int, str] = {}
    for node_id, pid in pids.items():
        if not _node_alive(pid) or not _is_our_node(pid):
            outcome[node_id] = "not running"
            continue
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for node_id, pid in pids.items():
        if node_id in outcome:
            continue
        while _node_alive(pid) and time.monotonic() < deadline:
            try:
                # Reap it if it is our child (foreground mode); harmless otherwise.
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            except ChildProcessError:
                pass
            time.sleep(0.05)
        if _node_alive(pid):
            os.kill(pid, signal.SIGKILL)
            outcome[node_id] = "killed (did not stop in time)"
        else:
            outcome[node_id] = "stopped"
    return outcome


def _prometheus_config(nodes: list[dict]) -> str:
    targets = ", ".join(f'"127.0.0.1:{n["metrics_port"]}"' for n in nodes)
    return (
        "# Written by `shoal cluster up`: scrape every node's metrics endpoint.\n"
        "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n"
        "scrape_configs:\n"
        "  - job_name: shoal\n"
        f"    static_configs:\n      - targets: [{targets}]\n"
    )


@cluster.command("up")
@click.option("--nodes", "count", type=click.IntRange(min=1, max=99), default=3, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".shoal-cluster"), show_default=True)
@click.option("--base-port", type=click.IntRange(min=1024, max=65000), default=19092, show_default=True)
@click.option("--detach", is_flag=True, help="Leave the nodes running in the background and return.")
@click.option("--set", "sets", multiple=True, metavar="K=V", help="Node setting for every node, repeatable.")
@click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True, help="Seconds to wait for the cluster to be ready.")
@pass_ctx
@handle_errors
def up(ctx: CliContext, count: int, data_dir: Path, base_port: int, detach: bool, sets: tuple[str, ...], timeout: float) -> None:
    """Start COUNT nodes as separate processes and wait until they form a cluster."""
    settings = parse_pairs(sets, "--set")
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    existing = data_dir / "cluster.json"
    if existing.exists():
        old = json.loads(existing.read_text())
        running = [n["node_id"] for n in old.get("nodes", []) if _node_alive(n["pid"]) and _is_our_node(n["pid"])]
        if running:
            raise click.UsageError(f"nodes {running} from {existing} are still running; run `shoal cluster down --data-dir {data_dir}` first")
    nodes = [
        {"node_id": i, "grpc_port": base_port + i - 1, "raft_port": base_port + 100 + i - 1, "metrics_port": base_port + 200 + i - 1}
        for i in range(1, count + 1)
    ]
    quorum = ",".join(f"{n['node_id']}@127.0.0.1:{n['raft_port']}" for n in nodes)
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    processes: dict[int, subprocess.Popen] = {}
    try:
        for n in nodes:
            args = [sys.executable, "-m", "node", "--node-id", str(n["node_id"]), "--listen", f"127.0.0.1:{n['grpc_port']}",
                    "--data-dir", str(data_dir / f"node-{n['node_id']}"), "--controller-quorum", quorum,
                    "--metrics-port", str(n["metrics_port"])]
            for key, value in settings.items():
                args += ["--set", f"{key}={value}"]
            log = open(data_dir / f"node-{n['node_id']}.log", "ab")
            processes[n["node_id"]] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                       start_new_session=detach)
            log.close()
            n["pid"] = processes[n["node_id"]].pid
            (data_dir / f"node-{n['node_id']}.pid").write_text(f"{n['pid']}\n")
        bootstrap = ",".join(f"127.0.0.1:{n['grpc_port']}" for n in nodes)
        (data_dir / "cluster.json").write_text(json.dumps({"bootstrap": bootstrap, "nodes": nodes}, indent=2) + "\n")
        (data_dir / "prometheus.yml").write_text(_prometheus_config(nodes))
        _wait_ready(ctx, bootstrap, processes, data_dir, count, timeout)
    except BaseException:
        _stop_pids({i: p.pid for i, p in processes.items()}, 10.0)
        raise
    if ctx.json:
        ctx.emit_json({"bootstrap": bootstrap, "data_dir": str(data_dir), "nodes": nodes, "detached": detach})
    else:
        ctx.console.print(f"[green]cluster up[/]: {count} node(s), bootstrap [bold]{bootstrap}[/], data in {data_dir}")
        ctx.console.print(f"  prometheus scrape config: {data_dir / 'prometheus.yml'}")
    if detach:
        return
    if not ctx.json:
        ctx.console.print("  running in the foreground; Ctrl-C stops every node")
    stop = {"requested": False}

    def on_signal(_signum: int, _frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop["requested"]:
        dead = [i for i, p in processes.items() if p.poll() is not None]
        if dead:
            ctx.err_console.print(f"[red]node(s) {dead} exited[/]; see {data_dir}/node-<id>.log. Stopping the others.")
            break
        time.sleep(0.2)
    outcome = _stop_pids({i: p.pid for i, p in processes.items() if p.poll() is None}, 30.0)
    for p in processes.values():
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    if not ctx.json:
        ctx.console.print("cluster stopped: " + ", ".join(f"node {i} {how}" for i, how in sorted(outcome.items())))
    if not stop["requested"]:
        raise SystemExit(1)


def _wait_ready(ctx: CliContext, bootstrap: str, processes: dict[int, subprocess.Popen], data_dir: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with Progress(console=ctx.err_console, transient=True, disable=ctx.json) as progress:
        task = progress.add_task("waiting for the nodes to form a cluster", total=count)
        with Admin({"bootstrap.servers": bootstrap, "request.timeout.ms": 2000}) as admin:
            while True:
                dead = [i for i, p in processes.items() if p.poll() is not None]
                if dead:
                    raise KafkaTimeoutError(f"node(s) {dead} exited during start-up; see {data_dir}/node-{dead[0]}.log")
                try:
                    description = admin.describe_cluster(timeout=2)
                    ready = [b for b in description.brokers if not b.fenced]
                    progress.update(task, completed=len(ready))
                    if description.controller_id >= 0 and len(ready) >= count:
                        return
                except ShoalError:
                    pass
                if time.monotonic() >= deadline:
                    raise KafkaTimeoutError(f"the cluster was not ready after {timeout:.0f}s; see the logs in {data_dir}")
                time.sleep(0.2)


@cluster.command("status")
@pass_ctx
@handle_errors
def status(ctx: CliContext) -> None:
    """Nodes, active controller, Raft term, and every partition's leader/replicas/ISR."""
    with Admin(ctx.client_config()) as admin:
        d = admin.describe_cluster()
    if ctx.json:
        ctx.emit_json(d.to_dict())
        return
    ctx.console.print(
        f"cluster [bold]{d.cluster_id}[/]: active controller [bold]{d.controller_id if d.controller_id >= 0 else 'none'}[/], "
        f"raft term {d.raft_term}, commit index {d.raft_commit_index} (answered by node {d.answered_by})"
    )
    nodes = Table(title="nodes", title_justify="left")
    for column in ("node", "address", "state", "role"):
        nodes.add_column(column)
    for b in d.brokers:
        nodes.add_row(str(b.node_id), b.address, "[red]fenced[/]" if b.fenced else "[green]up[/]",
                      "controller" if b.node_id == d.controller_id else "")
    ctx.console.print(nodes)
    parts = Table(title="partitions", title_justify="left")
    for column in ("topic", "partition", "leader", "epoch", "replicas", "isr"):
        parts.add_column(column)
    for p in d.partitions:
        isr = ",".join(map(str, p.isr))
        parts.add_row(p.topic, str(p.partition), str(p.leader) if p.leader >= 0 else "[red]offline[/]", str(p.leader_epoch),
                      ",".join(map(str, p.replicas)), f"[yellow]{isr}[/]" if p.under_replicated else isr)
    ctx.console.print(parts)
    colour = "green" if d.under_replicated_partitions == 0 else "yellow"
    ctx.console.print(f"under-replicated partitions: [{colour}]{d.under_replicated_partitions}[/], offline partitions: {d.offline_partitions}")


@cluster.command("down")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".shoal-cluster"), show_default=True)
@click.option("--timeout", type=click.FloatRange(min=0), default=30.0, show_default=True, help="Seconds to wait before SIGKILL.")
@pass_ctx
@handle_errors
def down(ctx: CliContext, data_dir: Path, timeout: float) -> None:
    """Stop the nodes that `cluster up --detach` started in DATA_DIR (SIGTERM, then wait)."""
    manifest = data_dir / "cluster.json"
    if not manifest.exists():
        raise click.UsageError(f"no cluster.json in {data_dir}; was the cluster started with --data-dir {data_dir}?")
    nodes = json.loads(manifest.read_text())["nodes"]
    outcome = _stop_pids({n["node_id"]: n["pid"] for n in nodes}, timeout)
    for n in nodes:
        (data_dir / f"node-{n['node_id']}.pid").unlink(missing_ok=True)
    if ctx.json:
        ctx.emit_json({str(k): v for k, v in sorted(outcome.items())})
    else:
        ctx.console.print("cluster down: " + ", ".join(f"node {i} {how}" for i, how in sorted(outcome.items())))
