"""``shoal top`` in a real pseudo-terminal (tmux) against a 3-node cluster.

A share consumer accepts part of what it polled and keeps the rest acquired,
so the window of each partition holds acknowledged and acquired offsets; the
frame must name the group and partitions and draw those cells in their
colours. Pressing ``q`` must end the program.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from client import AcknowledgeType, Admin, NewTopic, Producer, ShareConsumer
from tests.harness import REPO_ROOT, Cluster, start_cluster, wait_until

pytestmark = [pytest.mark.multiprocess, pytest.mark.xdist_group("top")]

CELL = "█"
# SGR foreground colours rich uses for the states (client/cli/top.py STATE_STYLES).
YELLOW, GREEN = "33", "32"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_cluster(3, Path(tmp_path_factory.mktemp("top-cluster"))) as running:
        yield running


class Tmux:
    """A private tmux server (its own socket), so no user session is touched."""

    def __init__(self) -> None:
        self.socket = f"shoal-top-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True, timeout=10).stdout

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


def _coloured_cells(screen: str, colour: str) -> int:
    # tmux -e re-emits SGR sequences; a cell is the block character after a
    # sequence that sets this foreground colour (possibly among other attributes).
    return len(re.findall(rf"\x1b\[(?:[0-9]+;)*{colour}(?:;[0-9]+)*m{CELL}+", screen))


def test_top_draws_the_window_and_quits_on_q(cluster: Cluster, tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")
    topic, group = f"top-{uuid.uuid4().hex[:8]}", f"top-g-{uuid.uuid4().hex[:8]}"
    with Admin({"bootstrap.servers": cluster.bootstrap}) as admin:
        admin.create_topics([NewTopic(topic, 2, 3)])[topic].result()
        admin.alter_group_configs(group, set={"share.auto.offset.reset": "earliest"})
    with Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 1}) as producer:
        for i in range(40):
            producer.send(topic, str(i), partition=i % 2)
        producer.flush(30)

    consumer = ShareConsumer({"bootstrap.servers": cluster.bootstrap, "group.id": group, "share.acknowledgement.mode": "explicit"})
    tmux = Tmux()
    try:
        consumer.subscribe([topic])
        polled: list = []

        def both_partitions_polled() -> bool:
            polled.extend(consumer.poll(0.5))
            return {r.partition for r in polled} == {0, 1}

        wait_until(both_partitions_polled, 30, "records of both partitions")
        # Accept the even offsets; the odd ones stay acquired (no further poll).
        for record in polled:
            if record.offset % 2 == 0:
                consumer.acknowledge(record, AcknowledgeType.ACCEPT)
        consumer.commit_sync()

        # COLUMNS/LINES: some tmux versions size a detached session's pane
        # from default-size rather than -x/-y. The exit status goes to a file:
        # under load tmux 3.3a can leave an exited pane's process unreaped (a
        # zombie), so #{pane_dead_status} stays empty though the program ended.
        status_file = tmp_path / "top.status"
        command = (
            f"env COLUMNS=220 LINES=60 {shlex.quote(sys.executable)} -m client.cli -b {cluster.bootstrap} top --interval 0.5;"
            f" echo $? > {shlex.quote(str(status_file))}"
        )
        tmux.run("new-session", "-d", "-s", "top", "-x", "220", "-y", "60", "-c", str(REPO_ROOT), command)
        tmux.run("set-option", "-t", "top", "remain-on-exit", "on")
        screens: list[str] = []

        def frame_complete() -> bool:
            screens.append(tmux.run("capture-pane", "-p", "-e", "-t", "top"))
            plain = re.sub(r"\x1b\[[0-9;]*m", "", screens[-1])
            return (
                group in plain
                and f"{topic}-0" in plain
                and f"{topic}-1" in plain
                and _coloured_cells(screens[-1], YELLOW) >= 2
                and _coloured_cells(screens[-1], GREEN) >= 2
            )

        try:
            wait_until(frame_complete, 30, "a frame with the group, both partitions and coloured cells", interval_s=0.3)
        except TimeoutError as exc:
            raise AssertionError(f"last screen:\n{screens[-1] if screens else '(none)'}") from exc
        plain = re.sub(r"\x1b\[[0-9;]*m", "", screens[-1])
        assert "controller" in plain and "under-replicated 0" in plain

        tmux.run("send-keys", "-t", "top", "q")

        def exit_status() -> str | None:
            text = status_file.read_text() if status_file.exists() else ""
            return text.strip() if text.endswith("\n") else None

        try:
            status = wait_until(exit_status, 10, "shoal top to exit after q")
        except TimeoutError as exc:
            screen = tmux.run("capture-pane", "-p", "-t", "top")
            raise AssertionError(f"still running 10 s after q; last screen:\n{screen}") from exc
        assert status == "0"
    finally:
        tmux.close()
        consumer.close()


def test_top_once_prints_one_frame(cluster: Cluster) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "client.cli", "-b", cluster.bootstrap, "top", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "controller node" in result.stdout and "nodes" in result.stdout
    for node_id in cluster.node_ids:
        assert cluster.address(node_id) in result.stdout


def test_top_once_fails_when_no_node_answers(tmp_path: Path) -> None:
    from tests.harness import free_port

    result = subprocess.run(
        [sys.executable, "-m", "client.cli", "-b", f"127.0.0.1:{free_port()}", "top", "--once", "--interval", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 1
    assert "error" in result.stdout.lower()
