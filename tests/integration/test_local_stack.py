"""`vplab up --demo` / `vplab down`: the README's run command, as a user runs it; and what
is left after each way the stack can die (nothing: no process, no held port)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _up import VPLAB, Stack  # noqa: E402
from _up import describe as _describe  # noqa: E402
from _up import free_port as _free_port  # noqa: E402
from _up import port_free as _port_free  # noqa: E402
from _up import tagged as _tagged  # noqa: E402


def _wait_gone(tag: str, ports: list[int], timeout_s: float) -> tuple[float, list, list]:
    """(seconds until no tagged process is left and the ports are free, processes left,
    ports still taken), waiting at most ``timeout_s``."""
    start = time.monotonic()
    while True:
        left = _tagged(tag)
        taken = [p for p in ports if not _port_free(p)]
        elapsed = time.monotonic() - start
        if (not left and not taken) or elapsed > timeout_s:
            return elapsed, left, taken
        time.sleep(0.2)


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.cleanup()


def test_up_prints_urls_and_a_working_key_and_down_stops_it(tmp_path):
    port, grpc_port, http_port = _free_port(), _free_port(), _free_port()
    env = {**os.environ, "VPLAB_DATA_DIR": str(tmp_path / "data")}
    vplab = VPLAB
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


def test_sigkill_of_a_foreground_up_leaves_no_process_and_frees_its_ports(stack):
    stack.start()
    running = _tagged(stack.tag)
    assert any(" gateway " in cmd for _, cmd in running), running
    assert any("raylet" in cmd for _, cmd in running), running
    os.kill(stack.proc.pid, signal.SIGKILL)
    elapsed, left, taken = _wait_gone(stack.tag, stack.ports, timeout_s=20)
    print(f"\nSIGKILL: {len(running)} processes gone, ports free after {elapsed:.1f}s")
    assert not left and not taken, (_describe(left), taken, elapsed)


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_sigterm_or_ctrl_c_stops_everything_within_seconds(stack, how):
    stack.start()
    start = time.monotonic()
    if how == "SIGTERM":
        stack.proc.send_signal(signal.SIGTERM)
    else:  # what a terminal does: SIGINT to the foreground job's whole process group
        os.killpg(stack.proc.pid, signal.SIGINT)
    elapsed, left, taken = _wait_gone(stack.tag, stack.ports, timeout_s=30)
    stack.proc.wait(timeout=10)
    print(f"\n{how}: everything down after {time.monotonic() - start:.1f}s")
    assert not left and not taken, (left, taken)
    assert elapsed < 15, f"took {elapsed:.1f}s"
    assert stack.proc.returncode == 0, stack.log()[-3000:]
    assert "VP Lab stopped" in stack.log()
    assert not stack.state.exists()


def test_down_stops_a_foreground_stack(stack):
    stack.start()
    assert json.loads(stack.state.read_text())["pid"] == stack.proc.pid
    down = subprocess.run(
        VPLAB + ["down"], env=stack.env, capture_output=True, text=True, timeout=60
    )
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    elapsed, left, taken = _wait_gone(stack.tag, stack.ports, timeout_s=20)
    print(f"\nvplab down: everything down after {elapsed:.1f}s (after down returned)")
    assert not left and not taken, (left, taken)
    assert not stack.state.exists()
    again = subprocess.run(
        VPLAB + ["down"], env=stack.env, capture_output=True, text=True, timeout=60
    )
    assert "no local stack is running" in again.stdout


def test_a_port_in_use_is_reported_with_its_holder_and_nothing_starts(stack):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", stack.grpc_port))
        holder.listen()
        up = subprocess.run(
            VPLAB + ["up", "--demo"] + stack.args(),
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert up.returncode != 0
        assert f"port {stack.grpc_port}" in up.stderr, up.stderr
        assert f"pid {os.getpid()}" in up.stderr, up.stderr  # the holder: this test
        assert "Traceback" not in up.stderr, up.stderr
        assert not _tagged(stack.tag), "something started"
        assert not stack.state.exists()


def test_down_ignores_a_stale_state_file_naming_another_program(tmp_path):
    env = {**os.environ, "VPLAB_DATA_DIR": str(tmp_path / "data")}
    other = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "stack.json").write_text(json.dumps({"pid": other.pid}))
        down = subprocess.run(VPLAB + ["down"], env=env, capture_output=True, text=True, timeout=60)
        assert "no local stack is running" in down.stdout, down.stdout + down.stderr
        assert other.poll() is None, "vplab down signalled an unrelated process"
        assert not (tmp_path / "stack.json").exists()
    finally:
        other.kill()
        other.wait()
