"""The layering of ARCHITECTURE.md, checked: a pure core and a client that only speaks gRPC."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IO_MODULES = {"grpc", "asyncio", "threading", "socket", "time", "random", "pysyncobj",
              "prometheus_client", "subprocess", "os"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_coordinator_is_pure() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & IO_MODULES)
        for path in (ROOT / "coordinator").glob("*.py")
        if imported_roots(path) & IO_MODULES
    }
    assert not offenders, f"coordinator/ must take now_ms and do no I/O: {offenders}"


def test_cluster_core_is_pure() -> None:
    # cluster/raft.py is the one adapter allowed to touch pysyncobj and threads.
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & IO_MODULES)
        for path in (ROOT / "cluster").glob("*.py")
        if path.name != "raft.py" and imported_roots(path) & IO_MODULES
    }
    assert not offenders, f"cluster/ decisions must be pure: {offenders}"


def test_client_speaks_only_grpc() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & {"node", "cluster", "coordinator"})
        for path in (ROOT / "client").rglob("*.py")
        if imported_roots(path) & {"node", "cluster", "coordinator"}
    }
    assert not offenders, f"client/ may import proto only: {offenders}"


def test_error_codes_match_the_wire() -> None:
    from coordinator.errors import ErrorCode
    from proto import shoal_pb2

    wire = dict(shoal_pb2.ErrorCode.items())
    core = {code.name: int(code) for code in ErrorCode}
    assert core == wire, "coordinator.errors.ErrorCode and proto ErrorCode must list the same codes"


def test_test_modules_have_unique_names() -> None:
    # tests/ has no __init__.py files (rootdir-relative imports): pytest imports
    # each test file by its basename, so two files of one name cannot both be
    # collected in one run (`make test` collects everything at once).
    seen: dict[str, list[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"test files share a basename: {clashes}"
