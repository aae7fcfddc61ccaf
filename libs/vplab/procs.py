"""Linux process hygiene for the local stack: parent-death signals, a child subreaper,
who holds a port, and whether a pid is still the process we started.

Everything here reads ``/proc`` or calls ``prctl``; on other systems the calls are no-ops
(``die_with_parent``, ``become_subreaper``) or report nothing (``port_holders``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# Set by a parent for a child it starts: the child's ``vplab`` entry point calls
# ``die_with_parent`` with this pid (see ``adopt_parent_death``).
PARENT_ENV = "VPLAB_DIE_WITH_PARENT"


def _prctl(option: int, arg: int) -> bool:
    if not os.path.exists("/proc/self"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    return libc.prctl(option, arg, 0, 0, 0) == 0


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies, however it dies.

    ``parent_pid`` is the parent that started us: if it died before the call (we were
    already re-parented), exit now. Note that Linux sends the signal when the *thread* that
    forked us exits, so start such children from a thread that lives as long as the parent.
    """
    if _prctl(PR_SET_PDEATHSIG, sig) and os.getppid() != parent_pid:
        os._exit(1)


def adopt_parent_death() -> None:
    """``die_with_parent`` when the process that started us asked for it (``PARENT_ENV``).

    The variable is removed so it does not reach our own children.
    """
    value = os.environ.pop(PARENT_ENV, "")
    if value.isdigit():
        die_with_parent(int(value))


def become_subreaper() -> bool:
    """Orphaned descendants (e.g. Ray workers whose raylet died) are re-parented to us,
    not to init, so ``kill_children`` can still find them."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid it names one process."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    fields = _stat(pid)
    if fields is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not os.path.exists("/proc/self")  # no /proc: trust kill(0)
    return fields[0] != "Z"


def children(pid: int | None = None) -> list[int]:
    """The live direct children of ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    found = []
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if name.isdigit():
            fields = _stat(int(name))
            if fields and fields[0] != "Z" and int(fields[1]) == pid:
                found.append(int(name))
    return found


def kill_children(grace_s: float = 1.0, keep: tuple[int, ...] = ()) -> list[int]:
    """SIGTERM every child of this process but ``keep``, SIGKILL those left after
    ``grace_s``; reap them.

    Repeated until none are left, since a subreaper adopts grandchildren as their parents
    die. Returns the pids signalled.
    """
    signalled: list[int] = []
    deadline = time.monotonic() + grace_s
    sig = signal.SIGTERM
    while True:
        _reap()
        pids = [pid for pid in children() if pid not in keep]
        if not pids:
            return signalled
        if time.monotonic() >= deadline:
            sig = signal.SIGKILL
        for pid in pids:
            if sig == signal.SIGKILL or pid not in signalled:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if pid not in signalled:
                signalled.append(pid)
        time.sleep(0.1)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# --- the stack's reaper ------------------------------------------------------------------

# Every process of one local stack carries this variable (set before Ray starts, inherited by
# the gateway, Ray's processes and its workers), whatever its parent, group or session.
STACK_ENV = "VPLAB_STACK_ID"
_reaper_pipe: list[int] = []  # the write end, held open for this process's whole life


def tagged(name: str, value: str) -> list[int]:
    """Live processes (not this one) whose initial environment has ``name=value``."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
        except OSError:
            continue
        fields = _stat(int(entry))
        if fields and fields[0] != "Z":
            found.append(int(entry))
    return found


def kill_tagged(name: str, value: str) -> list[int]:
    """SIGKILL every process ``tagged(name, value)``; the pids signalled."""
    pids = tagged(name, value)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def start_reaper(name: str, value: str) -> int:
    """A tiny process that SIGKILLs every ``name=value`` process once this one is gone.

    It waits for EOF on a pipe whose write end only this process holds (non-inheritable), so
    it wakes however we die, SIGKILL included, and sweeps up what the parent-death signals
    do not reach: Ray's dashboard and runtime-env agents block for tens of seconds reporting
    their raylet's death to a dead GCS. Returns its pid.
    """
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vplab.procs", "reap", name, value],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
        )
    finally:
        os.close(read_end)
    _reaper_pipe.append(write_end)
    return proc.pid


def descendants(root: int) -> dict[int, int]:
    """``{pid: start_time}`` of ``root``'s live descendants (one pass over ``/proc``)."""
    kids: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and fields[0] != "Z":
                kids.setdefault(int(fields[1]), []).append((int(entry), int(fields[19])))
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        for pid, started in kids.get(frontier.pop(), []):
            if pid not in found:
                found[pid] = started
                frontier.append(pid)
    return found


def _kill_known(known: dict[int, int]) -> list[int]:
    """SIGKILL the ``known`` processes that are still the ones recorded (same start time:
    a recycled pid is left alone), and their children; the pids signalled."""
    killed = []
    for pid, started in list(known.items()):
        if start_time(pid) != started or not alive(pid):  # gone, recycled or a zombie
            known.pop(pid)
            continue
        for child, child_started in descendants(pid).items():
            known.setdefault(child, child_started)
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            known.pop(pid)
    return killed


def _reap_main(name: str, value: str) -> None:
    for sig in (signal.SIGINT, signal.SIGHUP):  # Ctrl-C / a closed terminal are the parent's
        signal.signal(sig, signal.SIG_IGN)
    # While the stack lives, record its process tree every second: a process found only by
    # its tag can hide, since a title set with setproctitle overwrites the memory that
    # /proc/PID/environ reads (Ray's DashboardAgent survived a SIGKILL that way).
    stack, me = os.getppid(), os.getpid()
    known: dict[int, int] = {}
    while True:
        readable, _, _ = select.select([0], [], [], 1.0)
        if readable:
            if not os.read(0, 4096):
                break
            continue
        known = {p: t for p, t in known.items() if start_time(p) == t}
        known.update(descendants(stack))
        known.pop(me, None)
    # Processes may still be starting children as we kill (a raylet spawning its agents
    # when the stack died): sweep until nothing has appeared for 3 s, 20 s at most.
    deadline, quiet_since = time.monotonic() + 20, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - quiet_since < 3:
        if _kill_known(known) + kill_tagged(name, value):
            quiet_since = time.monotonic()
        time.sleep(0.2)


# --- ports -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortHolder:
    pid: int | None  # None: the socket is visible but its process is not (another user's)
    command: str


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            # local_address is ADDR:PORT in hex; st 0A is LISTEN; inode is column 10.
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes


def _ss_holders(port: int) -> list[PortHolder]:
    ss = shutil.which("ss")
    if not ss:
        return []
    try:
        out = subprocess.run(
            [ss, "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    pids = {int(p) for p in re.findall(r"pid=(\d+)", out)}
    return [PortHolder(pid, cmdline(pid) or "?") for pid in sorted(pids)]


def port_holders(port: int) -> list[PortHolder]:
    """The processes with a TCP socket listening on ``port`` (any address).

    Found through ``/proc/net/tcp{,6}`` and ``/proc/*/fd``; then ``ss -ltnp``. A listening
    socket whose process is hidden from us gives one holder with ``pid=None``.
    """
    inodes = _listening_inodes(port)
    if not inodes:
        return []
    targets = {f"socket:[{inode}]" for inode in inodes}
    holders = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{name}/fd/{fd}") in targets:
                    holders.append(PortHolder(int(name), cmdline(int(name)) or "?"))
                    break
            except OSError:
                continue
    return holders or _ss_holders(port) or [PortHolder(None, "?")]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now (with SO_REUSEADDR, as servers do,
    so connections lingering in TIME_WAIT do not count). A wildcard ``host`` ("0.0.0.0")
    also needs the port free on every address, IPv6 included."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    if host in ("0.0.0.0", "::"):
        return not _listening_inodes(port)
    return True


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now, below the kernel's ephemeral range and above Ray's worker
    ports (10002-19999), never one this process handed out before. A port from bind(0) is
    ephemeral, and Ray's sockets and outgoing connections draw from that range while a stack
    starts: one took Serve's HTTP port before the proxy bound it (CI, 2026-12-01/02)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    for _ in range(500) if low > 20001 else ():
        port = random.randrange(20000, low)
        if port not in _handed_out and port_free(port, host):
            _handed_out.add(port)
            return port
    with socket.socket() as s:  # no /proc, or nothing free below the range
        s.bind((host, 0))
        port = s.getsockname()[1]
    _handed_out.add(port)
    return port


def describe_holders(holders: list[PortHolder]) -> str:
    if not holders or all(h.pid is None for h in holders):
        return "in use (holder not visible to this user)"
    return "held by " + "; ".join(
        f"pid {h.pid} ({h.command[:200]})" for h in holders if h.pid is not None
    )


if __name__ == "__main__" and sys.argv[1:2] == ["reap"]:
    _reap_main(sys.argv[2], sys.argv[3])
