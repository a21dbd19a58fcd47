"""The README's client example runs as written against a real 3-node cluster."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.harness import REPO_ROOT, start_cluster

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
