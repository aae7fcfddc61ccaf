"""A foreground `vplab up --demo` as a user runs it (its own session, like a shell job), and
what tests need to find every process of it afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from vplab import procs

VPLAB = [sys.executable, "-m", "vplab.cli"]
TAG = "VPLAB_TEST_STACK"  # inherited by every process of a test's stack, Ray workers included


def port_free(port: int) -> bool:
    """Free to listen on, on every address (``vplab up`` listens on all of them)."""
    return procs.port_free(port, "0.0.0.0")


def free_port() -> int:
    return procs.free_port("0.0.0.0")


def tagged(tag: str) -> list[tuple[int, str]]:
    """Live processes (pid, command line) whose environment carries ``tag``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if f"{TAG}={tag}".encode() not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{name}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{name}/cmdline", "rb") as f:
                found.append((int(name), f.read().replace(b"\0", b" ").decode()[:120]))
        except OSError:
            continue
    return found


def describe(pids: list[tuple[int, str]]) -> list[str]:
    """What a failure needs to name a survivor's cause: its state, parent, age and whether it
    still carries the stack's own id (the reaper's tag) besides the test's."""
    ticks, uptime = os.sysconf("SC_CLK_TCK"), float(Path("/proc/uptime").read_text().split()[0])
    out = []
    for pid, cmd in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(fields[1])
        parent = Path(f"/proc/{ppid}/cmdline").read_bytes()[:80] if ppid > 1 else b""
        stack_tag = any(e.startswith(b"VPLAB_STACK_ID=") for e in env)
        age = uptime - int(fields[19]) / ticks
        out.append(
            f"pid {pid} state {fields[0]} ppid {ppid} ({parent!r}) age {age:.1f}s "
            f"stack_tag {stack_tag}: {cmd}"
        )
    return out


class Stack:
    """A foreground `vplab up --demo`, in its own session like a shell job."""

    def __init__(self, tmp_path):
        self.tag = uuid.uuid4().hex
        self.port, self.grpc_port, self.http_port = free_port(), free_port(), free_port()
        self.ports = [self.port, self.grpc_port, self.http_port]
        self.env = {**os.environ, "VPLAB_DATA_DIR": str(tmp_path / "data"), TAG: self.tag}
        self.state = tmp_path / "stack.json"
        self.out = tmp_path / "up.log"
        self.proc: subprocess.Popen | None = None

    def args(self) -> list[str]:
        return ["--port", str(self.port), "--grpc-port", str(self.grpc_port)] + [
            "--http-port",
            str(self.http_port),
        ]

    def start(self, timeout_s: float = 400) -> None:
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                VPLAB + ["up", "--demo"] + self.args(),
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while "API key" not in self.log():
            assert self.proc.poll() is None, f"vplab up exited:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"not up after {timeout_s}s:\n{self.log()[-3000:]}"
            time.sleep(1)

    def log(self) -> str:
        return self.out.read_text(errors="replace")

    def cleanup(self) -> None:
        """Kill whatever is left, even when the test failed half-way."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid, _ in tagged(self.tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.wait(timeout=30)
