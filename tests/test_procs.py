"""vplab.procs on Linux: who holds a port, the parent-death signal, the stack's reaper."""

import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from vplab import procs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _wait(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_listening_port_names_its_holder_and_a_free_one_is_free():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not procs.port_free(port) and not procs.port_free(port, "0.0.0.0")
        holders = procs.port_holders(port)
        assert [h.pid for h in holders] == [os.getpid()]
        assert f"pid {os.getpid()} (" in procs.describe_holders(holders)
    assert procs.port_free(port) and procs.port_holders(port) == []


@pytest.fixture
def spawn():
    """Start a python parent running a script (it prints "ready" once its children are up);
    whatever it and its children leave is killed at teardown, even when the test fails."""
    started: list[subprocess.Popen] = []

    def start(script: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script)],
            env=ENV,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in started:
        left = procs.children(proc.pid)
        proc.kill()
        proc.wait()
        for pid in left:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def test_a_child_that_asked_for_it_dies_with_its_parent_even_on_sigkill(spawn):
    parent = spawn(
        f"""
        import os, subprocess, sys, time
        env = {{**os.environ, "{procs.PARENT_ENV}": str(os.getpid())}}
        code = "from vplab import procs; procs.adopt_parent_death(); print(1, flush=True); "
        code += "import time; time.sleep(60)"
        child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE)
        child.stdout.readline()
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    child = procs.children(parent.pid)
    assert len(child) == 1
    parent.kill()
    parent.wait()
    assert _wait(lambda: not procs.alive(child[0])), "the child outlived its parent"


def test_the_reaper_kills_every_tagged_process_once_its_parent_is_killed(spawn):
    tag = uuid.uuid4().hex
    parent = spawn(
        f"""
        import os, subprocess, time
        from vplab import procs
        os.environ[procs.STACK_ENV] = "{tag}"
        reaper = procs.start_reaper(procs.STACK_ENV, "{tag}")
        sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)  # not in our group
        print("ready", flush=True)
        print(reaper, sleeper.pid, flush=True)
        time.sleep(60)
        """
    )
    started = {int(pid) for pid in parent.stdout.readline().split()}
    # The reaper and sleep: /proc/PID/environ is the environment a process was started with.
    # Waited for, and each one described when missing: a CI run once saw only one of them.
    found = _wait(lambda: set(procs.tagged(procs.STACK_ENV, tag)) == started)
    assert found, [(pid, procs.alive(pid), procs.cmdline(pid)) for pid in started]
    parent.kill()
    parent.wait()
    assert _wait(lambda: not procs.tagged(procs.STACK_ENV, tag)), procs.tagged(procs.STACK_ENV, tag)


def test_the_reaper_kills_what_it_saw_in_the_stack_even_without_a_tag(spawn):
    # A title set with setproctitle overwrites what /proc/PID/environ shows: such a process
    # (Ray's DashboardAgent) is found by the tree the reaper records while the stack lives.
    tag = uuid.uuid4().hex
    parent = spawn(
        f"""
        import os, subprocess, time
        from vplab import procs
        os.environ[procs.STACK_ENV] = "{tag}"
        procs.start_reaper(procs.STACK_ENV, "{tag}")
        hidden = subprocess.Popen(["sleep", "60"], env={{"PATH": os.environ["PATH"]}})
        time.sleep(2.5)  # the reaper records the tree every second
        print("ready", flush=True)
        print(hidden.pid, flush=True)
        time.sleep(60)
        """
    )
    hidden = int(parent.stdout.readline())
    assert procs.alive(hidden) and hidden not in procs.tagged(procs.STACK_ENV, tag)
    parent.kill()
    parent.wait()
    assert _wait(lambda: not procs.alive(hidden)), "an untagged child outlived the stack"


def test_kill_children_escalates_to_sigkill(spawn):
    # In a parent of its own: kill_children here would kill pytest's other children.
    parent = spawn(
        """
        import signal, subprocess, sys, time
        from vplab import procs
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        code += "print(1, flush=True); time.sleep(60)"
        stubborn = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        stubborn.stdout.readline()
        print("ready", flush=True)
        start = time.monotonic()
        signalled = procs.kill_children(grace_s=0.3)
        print(signalled == [stubborn.pid], procs.alive(stubborn.pid), time.monotonic() - start)
        """
    )
    ok, alive, elapsed = parent.stdout.readline().split()
    parent.wait(timeout=10)
    assert ok == "True" and alive == "False" and float(elapsed) < 3


def test_free_ports_sit_below_the_ephemeral_range_and_are_never_handed_out_twice():
    # Ray's sockets and outgoing connections take ephemeral ports while a stack starts: a
    # port from bind(0) was taken before Serve's proxy bound it (CI, 2026-12-02).
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [procs.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(20000 <= p < low and procs.port_free(p) for p in ports)
    assert procs.port_free(procs.free_port("0.0.0.0"), "0.0.0.0")
