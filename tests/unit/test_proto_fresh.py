"""The committed gRPC modules must match proto/shoal.proto (run `make proto`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("shoal_pb2.py", "shoal_pb2_grpc.py", "shoal_pb2.pyi")


def test_generated_modules_are_fresh(tmp_path: Path) -> None:
    (tmp_path / "proto").mkdir()
    (tmp_path / "proto" / "shoal.proto").write_bytes((ROOT / "proto" / "shoal.proto").read_bytes())
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.",
         "--grpc_python_out=.", "--pyi_out=.", "proto/shoal.proto"],
        cwd=tmp_path, check=True,
    )
    stale = [
        name for name in GENERATED
        if (tmp_path / "proto" / name).read_bytes() != (ROOT / "proto" / name).read_bytes()
    ]
    assert not stale, f"stale generated modules {stale}: run `make proto` and commit them"
