"""Run schemathesis (its CLI, as a user would) against a gateway URL with one API key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFIG = Path(__file__).with_name("schemathesis.toml")
# The whole REST contract: every operation of the OpenAPI document (the /v1 routes, plus
# GET /healthz and GET /metrics). The one number the contract tests count against.
OPERATIONS = 47


def run_schemathesis(url: str, api_key: str, max_examples: int, *extra: str) -> str:
    """Every check, every phase; fails the calling test with schemathesis' report."""
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(exe), "--config-file", str(CONFIG), "run", f"{url}/openapi.json",
        "-H", f"Authorization: Bearer {api_key}",
        "--checks", "all", "--max-examples", str(max_examples),
        "--seed", "1", "--no-color", "--request-timeout", "60", *extra,
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    report = r.stdout[-20000:] + r.stderr[-4000:]
    assert r.returncode == 0, report
    assert "Tested: 25" in report or "Tested:" in report, report
    return report
