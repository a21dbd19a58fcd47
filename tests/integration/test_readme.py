"""The README's client example runs as written against a real 3-node cluster."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO_ROOT, free_base_port, start_cluster

pytestmark = pytest.mark.multiprocess


def readme_python_blocks() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_client_example_runs(tmp_path: Path) -> None:
    (example,) = readme_python_blocks()
    processed: list[bytes] = []

    def process(value: bytes) -> bool:
        processed.append(value)
        return True

    with start_cluster(3, tmp_path) as cluster:
        code = example.replace('"127.0.0.1:19092"', repr(cluster.bootstrap))
        namespace: dict[str, object] = {"process": process}
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README is ours
    # The share consumer's single poll received records produced just before.
    assert processed, "the README's share consumer received nothing"
    assert all(value.startswith(b"job-") for value in processed)


def readme_cli_tour() -> list[str]:
    """The command lines of the README's CLI tour, comments stripped."""
    text = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"## A tour of the CLI\n\n```sh\n(.*?)```", text, flags=re.DOTALL)
    assert block, "README.md has no CLI tour block"
    lines = []
    for line in block.group(1).splitlines():
        command = re.sub(r"\s+#\s.*$", "", line).strip()
        if command:
            lines.append(command)
    return lines


def test_readme_cli_tour_runs(tmp_path: Path) -> None:
    """Every line of the README's CLI tour exits 0 against a real cluster (``shoal top`` is interactive:
    tests/integration/test_top.py drives it in a terminal)."""
    tour = readme_cli_tour()
    assert tour[0].startswith("export SHOAL_BOOTSTRAP=")
    shoal_bin = Path(sys.executable).parent
    base_port = free_base_port()
    detached_dir = tmp_path / "detached"
    outputs: dict[str, str] = {}
    with start_cluster(3, tmp_path / "cluster") as cluster:
        env = {**os.environ, "PATH": f"{shoal_bin}{os.pathsep}{os.environ['PATH']}", "SHOAL_BOOTSTRAP": cluster.bootstrap}
        try:
            for command in tour[1:]:
                if command == "shoal top":
                    continue
                command = command.replace("--data-dir /tmp/c", f"--data-dir {detached_dir}").replace("29092", str(base_port))
                # The tour's consume line follows new records forever; bound it as a user would with Ctrl-C.
                if command.startswith("shoal consume "):
                    command += " --max-records 100"
                done = subprocess.run(["bash", "-c", command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
                assert done.returncode == 0, f"{command!r} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
                outputs[command] = done.stdout
        finally:
            subprocess.run(["shoal", "cluster", "down", "--data-dir", str(detached_dir)], env=env, capture_output=True, timeout=60)

    consumed = [out for command, out in outputs.items() if command.startswith("shoal share-consume")]
    assert len(consumed) == 2 and all("job-" in out for out in consumed), consumed
    describe = next(out for command, out in outputs.items() if "describe workers --offsets" in command)
    assert "jobs" in describe
