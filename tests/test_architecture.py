"""The layering of docs/ARCHITECTURE.md, checked on the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (statically)."""
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_the_library_never_imports_the_services():
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.split(".")[0] == "services")
        for p in _modules("libs/vplab")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_services_import_only_the_library_and_their_own_package():
    bad = {}
    for p in _modules("services"):
        own = p.relative_to(ROOT / "services").parts[0]
        for m in _imports(p):
            parts = m.split(".")
            if parts[0] == "services" and len(parts) > 1 and parts[1] not in (own, "common"):
                bad.setdefault(str(p.relative_to(ROOT)), []).append(m)
    assert bad == {}


def test_gateway_main_only_assembles():
    """No route is defined in main: handlers live in one router module per resource."""
    tree = ast.parse((ROOT / "services/gateway/main.py").read_text())
    decorated = [
        n.name
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        and any(
            isinstance(d, ast.Call)
            and getattr(d.func, "attr", "") in {"get", "post", "put", "patch", "delete"}
            for d in n.decorator_list
        )
    ]
    assert decorated == []


def test_proto_conversions_live_in_the_wire_module():
    """Only vplab.rpc.convert builds or reads the messages' fields by hand: nothing else
    constructs RleMask / Job / JobEvent messages."""
    needles = (
        "common_pb2.RleMask(",
        "training_pb2.Job(",
        "pb.Job(",
        "training_pb2.JobEvent(",
        "pb.JobEvent(",
    )
    found = {}
    for folder in ("libs/vplab", "services"):
        for p in _modules(folder):
            rel = str(p.relative_to(ROOT))
            if rel.startswith("libs/vplab/rpc/"):
                continue
            text = p.read_text()
            hits = [n for n in needles if n in text]
            if hits:
                found[rel] = hits
    assert found == {}
