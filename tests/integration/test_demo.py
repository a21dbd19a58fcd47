"""`make demo` (deploy/demo.py): the talk's demo shows shared partitions and an idle classic consumer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO_ROOT, start_cluster

pytestmark = pytest.mark.multiprocess


def test_demo_shows_share_consumers_outnumbering_partitions(tmp_path: Path) -> None:
    with start_cluster(3, tmp_path) as cluster:
        result = subprocess.run(
            [sys.executable, str(REPO_ROOT / "deploy" / "demo.py"), "--bootstrap", cluster.bootstrap],
            capture_output=True, text=True, timeout=180, env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"},
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 of 3 share consumers received records" in result.stdout
    assert "1 classic consumer(s) idle" in result.stdout
