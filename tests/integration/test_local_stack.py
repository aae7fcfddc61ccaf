"""`vplab up --demo` / `vplab down`: the README's run command, as a user runs it."""

import os
import re
import socket
import subprocess
import sys

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_up_prints_urls_and_a_working_key_and_down_stops_it(tmp_path):
    port, grpc_port, http_port = _free_port(), _free_port(), _free_port()
    env = {**os.environ, "VPLAB_DATA_DIR": str(tmp_path / "data")}
    vplab = [sys.executable, "-m", "vplab.cli"]
    up = subprocess.run(
        vplab
        + [
            "up",
            "--demo",
            "--detach",
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
            "--http-port",
            str(http_port),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{port}" in up.stdout and f"127.0.0.1:{grpc_port}" in up.stdout
        key = re.search(r"API key\s*:\s*(vpl_\S+)", up.stdout).group(1)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/datasets",
            json={"name": "first"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        # Data lands in the embedded LocalStore under VPLAB_DATA_DIR.
        assert any((tmp_path / "data" / "tenants").rglob("*.json"))
    finally:
        down = subprocess.run(
            vplab + ["down"], env=env, capture_output=True, text=True, timeout=120
        )
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    again = subprocess.run(vplab + ["down"], env=env, capture_output=True, text=True, timeout=60)
    assert "no local stack is running" in again.stdout
