"""Privilege, identity, terminals and signals, attacked from inside.

- identity: the payload cannot become root, has no capability in any set and cannot
  raise one, and a setuid-root or file-capability binary gives it nothing (no_new_privs,
  nosuid mounts, an unmapped owner: any one would do);
- terminal: TIOCSTI pushes characters into a terminal's input, to be run by the shell that
  reads it next (bubblewrap CVE-2017-5226); tried on the caller's terminal as stdin, by
  an attacker that first makes it its controlling terminal;
- signals: kill(-1, ...) and kill(0, ...) from inside reach only the sandbox, and the
  caller's and supervisor's pids do not exist inside.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import tempfile
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nsbox
from tests.conftest import (
    NSBOX_CLI,
    OWN_IDS,
    SandboxRun,
    probe_argv,
    require_root,
    require_sandbox,
    sandbox_processes,
    wait_until,
)
from tests.security._attack import compile_probe, reported, syscall_probe

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 syscall numbers")

# --- identity -------------------------------------------------------------------------------
BECOME_ROOT = syscall_probe(
    """
me = os.getuid()
out["setuid(0)"] = attempt(lambda: os.setuid(0))
out["setgid(0)"] = attempt(lambda: os.setgid(0))
out["setresuid(0,0,0)"] = attempt(lambda: os.setresuid(0, 0, 0))
out["setreuid(0,0)"] = attempt(lambda: os.setreuid(0, 0))
out["setresgid(0,0,0)"] = attempt(lambda: os.setresgid(0, 0, 0))
out["setgroups([0])"] = attempt(lambda: os.setgroups([0]))
raw(NR["setfsuid"], 0)  # returns the old fsuid whatever happens: read it back
out["fsuid"] = status_field("Uid").split()[3]
out["ids"] = os.getresuid() + os.getresgid()
out["setuid(own uid)"] = attempt(lambda: os.setuid(me))
out["me"] = me
""",
    "setfsuid",
)


def test_the_payload_cannot_become_root(sandbox_run: SandboxRun) -> None:
    out = reported(sandbox_run(BECOME_ROOT))
    me = out.pop("me")
    assert me != 0
    assert out.pop("setuid(own uid)") == "ok", "the set*id calls reach the kernel"
    assert out.pop("fsuid") == str(me)
    ids = out.pop("ids")
    assert ids[:3] == [me] * 3 and len(set(ids[3:])) == 1 and ids[3] != 0, ids
    assert out.pop("setgroups([0])") == "EPERM"
    # In own mode id 0 is not mapped in the payload's namespace at all: EINVAL, not EPERM.
    assert len(out) == 5 and set(out.values()) == {"EINVAL" if OWN_IDS else "EPERM"}, out


CAPS = syscall_probe(
    """
PR_CAPBSET_READ, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 23, 47, 2
out["sets"] = {k: status_field(k) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
last = int(open("/proc/sys/kernel/cap_last_cap").read())
out["bounding"] = [raw(NR["prctl"], PR_CAPBSET_READ, c, 0, 0, 0) for c in range(last + 1)]
out["ambient raise CAP_SYS_ADMIN"] = raw(NR["prctl"], PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, 21, 0, 0)
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
Data = ctypes.c_uint32 * 6  # effective, permitted, inheritable for capabilities 0-31 and 32-63
everything = Data(*[0xFFFFFFFF] * 6)
out["capset everything"] = raw(NR["capset"], ctypes.byref(Header(0x20080522, 0)), everything)
out["capset inheritable CAP_SYS_ADMIN"] = raw(NR["capset"], ctypes.byref(Header(0x20080522, 0)),
                                              Data(0, 0, 1 << 21, 0, 0, 0))
""",
    "prctl",
    "capset",
)


def test_no_capability_in_any_set_and_none_can_be_raised(api_run: SandboxRun) -> None:
    out = reported(api_run(CAPS))
    assert set(out.pop("sets").values()) == {"0000000000000000"}, out
    bounding = out.pop("bounding")
    assert len(bounding) > 37 and set(bounding) == {0}
    assert out == {
        "ambient raise CAP_SYS_ADMIN": "EPERM",
        "capset everything": "EPERM",
        "capset inheritable CAP_SYS_ADMIN": "EPERM",
    }


@pytest.fixture(scope="module")
def ids_binaries() -> Iterator[dict[str, Path]]:
    """The ids probe three times: plain; setuid and setgid root; with file capabilities.
    In a directory of its own that any uid may pass through (the premise runs them as
    nobody on the host), removed afterwards."""
    require_root("makes a setuid-root binary and one with file capabilities")
    with tempfile.TemporaryDirectory(prefix="tmp-nsbox-ids-") as name:
        out_dir = Path(name)
        out_dir.chmod(0o711)
        plain = compile_probe("ids.c", out_dir, "plain")
        setuid = compile_probe("ids.c", out_dir, "setuid")
        os.chown(setuid, 0, 0)
        os.chmod(setuid, 0o6755)
        filecaps = compile_probe("ids.c", out_dir, "filecaps")
        # struct vfs_cap_data, revision 2, effective: CAP_DAC_OVERRIDE, CAP_SETUID and CAP_SYS_ADMIN.
        wanted = 1 << 1 | 1 << 7 | 1 << 21
        caps = b"".join(v.to_bytes(4, "little") for v in (0x02000000 | 0x1, wanted, 0, 0, 0))
        os.setxattr(filecaps, "security.capability", caps)
        yield {"plain": plain, "setuid": setuid, "filecaps": filecaps}


@pytest.mark.parametrize("kind", ["setuid", "filecaps"])
def test_a_privileged_binary_gains_nothing(api_run: SandboxRun, ids_binaries: dict[str, Path], kind: str) -> None:
    """Run as the payload, a setuid-root binary and one with file capabilities report
    the same ids and (no) capabilities as the plain build of the same program."""
    binds = [f"{path}:/probe/{name}" for name, path in ids_binaries.items()]
    plain = json.loads(api_run(["/probe/plain"], ro_bind=binds).stdout)
    out = api_run([f"/probe/{kind}"], ro_bind=binds)
    assert out.status == "ok", out
    got = json.loads(out.stdout)
    assert got == plain, (got, plain)
    assert got["euid"] == got["ruid"] != 0 and got["egid"] == got["rgid"] != 0
    assert got["capeff"] == got["capprm"] == "0000000000000000" and got["nnp"] == "1"
    assert got["setuid0"] == 1  # EPERM


def test_premise_the_privileged_binaries_are_privileged_on_the_host(ids_binaries: dict[str, Path]) -> None:
    """Run on the host by an unprivileged uid, both do elevate: the test above discriminates."""
    require_sandbox()
    runs = {}
    for kind in ("setuid", "filecaps"):
        proc = subprocess.run(
            [str(ids_binaries[kind])], capture_output=True, user=65534, group=65534, extra_groups=[], check=True
        )
        runs[kind] = json.loads(proc.stdout)
    assert runs["setuid"]["euid"] == 0 and runs["setuid"]["ruid"] == 65534
    assert runs["filecaps"]["capeff"] != "0000000000000000"


# --- terminal -------------------------------------------------------------------------------
TIOCSTI_ATTACK = syscall_probe(
    """
TIOCSCTTY, TIOCSTI = 0x540E, 0x5412
out["stdin is a tty"] = os.isatty(0)
out["/dev/tty before"] = attempt(lambda: os.close(os.open("/dev/tty", os.O_RDWR)))
out["TIOCSCTTY"] = raw(NR["ioctl"], 0, TIOCSCTTY, 0)
results = {raw(NR["ioctl"], 0, TIOCSTI, ctypes.byref(ctypes.c_char(bytes([b])))) for b in b"id\\n"}
out["TIOCSTI"] = sorted(results, key=str)
""",
    "ioctl",
)


@contextlib.contextmanager
def terminal() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        yield master, slave
    finally:
        os.close(master)
        os.close(slave)


def pending_input(slave: int) -> bytes:
    os.set_blocking(slave, False)
    try:
        return os.read(slave, 1024)
    except BlockingIOError:
        return b""


def attack_terminal(front_end: str, slave: int, **options: Any) -> dict[str, Any]:
    if front_end == "cli":
        flags = [a for k, v in options.items() for a in (f"--{k}", v)]
        proc = subprocess.run(
            [NSBOX_CLI, "exec", *flags, "--", *TIOCSTI_ATTACK], stdin=slave, capture_output=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)
    with nsbox.NsSandbox(**options) as sandbox:
        result = sandbox.run(TIOCSTI_ATTACK, stdin=slave, capture_output=True)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout or b"")


@pytest.mark.parametrize("front_end", ["api", "cli"])
def test_tiocsti_cannot_type_into_the_callers_terminal(front_end: str) -> None:
    """The caller hands over its terminal as stdin. Even after making it its controlling
    terminal (possible here: it is no other session's), the payload cannot push "id\\n"
    into it for the caller's shell to run."""
    require_sandbox()
    with terminal() as (_, slave):
        out = attack_terminal(front_end, slave)
        injected = pending_input(slave)
    assert out["stdin is a tty"] and out["/dev/tty before"] == "ENXIO", out
    assert out["TIOCSTI"] == ["EPERM"], out
    assert injected == b""


def test_premise_unconfined_tiocsti_types_into_the_terminal() -> None:
    """Without the filter the same attack works: the characters wait in the terminal's input."""
    require_sandbox()
    with terminal() as (_, slave):
        out = attack_terminal("cli", slave, seccomp="unconfined")
        injected = pending_input(slave)
    assert out["TIOCSCTTY"] == 0 and out["TIOCSTI"] == [0], out
    assert injected == b"id\n"


# --- signals --------------------------------------------------------------------------------
KILL_ALL = probe_argv("""
import signal, time
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
time.sleep(0.05)
out["kill(-1, SIGKILL)"] = attempt(lambda: os.kill(-1, signal.SIGKILL))
_, status = os.waitpid(child, 0)
out["own child"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else "alive"
def left():  # the launcher (our parent) was killed too: gone once init has reaped it
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
deadline = time.monotonic() + 5
while len(left()) > 2 and time.monotonic() < deadline:
    time.sleep(0.01)
out["pids left"] = left()
out["me"] = os.getpid()
""")


@contextlib.contextmanager
def host_sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two host processes: one as root (leading a process group of its own), one as an
    unprivileged uid. Rootless, both are ours: the uid the payload shares in own mode."""
    other: dict[str, Any] = dict(user=65534, group=65534, extra_groups=[]) if os.geteuid() == 0 else {}
    sleepers = [
        subprocess.Popen(["sleep", "60"], process_group=0),
        subprocess.Popen(["sleep", "60"], **other),
    ]
    try:
        yield sleepers
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def neighbour_sandbox() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Another sandbox, whose payload (a sleep) runs as a uid of the sandbox range."""
    marker = "61.5"
    proc = subprocess.Popen([NSBOX_CLI, "exec", "--", "sleep", marker])

    def payload() -> int | None:
        for pid in sandbox_processes():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes() == f"sleep\0{marker}\0".encode():
                    return pid
        return None

    pid = None
    try:
        assert wait_until(lambda: payload() is not None, timeout=10), "the neighbour sandbox did not start"
        pid = payload()
        yield proc, pid or 0
    finally:
        proc.kill()
        proc.wait()
        assert pid is None or wait_until(lambda: not Path(f"/proc/{pid}").exists()), "the neighbour outlived its CLI"


def test_kill_minus_one_reaches_only_the_sandbox(api_run: SandboxRun) -> None:
    """kill(-1, SIGKILL) from inside kills the payload's own child, and nothing outside:
    not a host process of root or of another uid, nor another sandbox's payload."""
    with host_sleepers() as sleepers, neighbour_sandbox() as (neighbour, neighbour_payload):
        out = reported(api_run(KILL_ALL))
        time.sleep(0.1)
        assert [p.poll() for p in sleepers] == [None, None], "a host process was killed"
        assert neighbour.poll() is None and Path(f"/proc/{neighbour_payload}").exists(), "the neighbour was killed"
    assert out["kill(-1, SIGKILL)"] == "ok"
    assert out["own child"] == signal.SIGKILL, "the signal did reach what the payload may signal"
    assert out["pids left"] == [1, out["me"]], "only init (out of reach) and the payload itself remain"


KILL_GROUP = probe_argv("""
import signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
out["pgid is own pid"] = os.getpgid(0) == os.getpid()
out["kill(0, SIGTERM)"] = attempt(lambda: os.kill(0, signal.SIGTERM))
out["killpg(caller's group)"] = attempt(lambda: os.killpg(int(os.environ["HOST_PGID"]), signal.SIGTERM))
""")


def test_kill_zero_reaches_no_process_of_the_callers_group() -> None:
    """kill(0, ...) signals the caller's process group; the payload has its own session
    and group, so a host process in the CLI's group is not hit, nor is the CLI."""
    require_sandbox()
    with host_sleepers() as sleepers:
        group = sleepers[0].pid  # the CLI joins the root sleeper's group
        proc = subprocess.run(
            [NSBOX_CLI, "exec", "--env", f"HOST_PGID={group}", "--", *KILL_GROUP],
            capture_output=True,
            process_group=group,
            timeout=60,
        )
        time.sleep(0.1)
        assert sleepers[0].poll() is None, "the host process in the CLI's group was signalled"
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {"pgid is own pid": True, "kill(0, SIGTERM)": "ok", "killpg(caller's group)": "ESRCH"}


HOST_PIDS = syscall_probe(
    """
import signal
for pid in json.loads(sys.stdin.read()):
    out[f"kill {pid}"] = attempt(lambda: os.kill(pid, 0))
    out[f"pidfd_open {pid}"] = close_if_fd(raw(NR["pidfd_open"], pid, 0))
    out[f"/proc/{pid}"] = os.path.exists(f"/proc/{pid}")
out["ppid"] = os.getppid()
out["parent"] = open(f"/proc/{os.getppid()}/comm").read().strip()
""",
    "pidfd_open",
)


def test_the_callers_and_supervisors_pids_do_not_exist_inside() -> None:
    """Told the host pids of the CLI (the supervisor of ``nsbox exec``), of its caller and of
    an embedding process's supervisor, the payload can neither signal nor open them."""
    require_sandbox()
    with nsbox.NsSandbox() as sandbox:
        sandbox.run(["true"])  # started: its supervisor exists
        supervisor = getattr(sandbox._backend, "supervisor_pid", None)
        proc = subprocess.Popen(
            [NSBOX_CLI, "exec", "--", *HOST_PIDS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        targets = [p for p in (proc.pid, os.getpid(), supervisor) if p]
        assert all(p > 100 for p in targets), "a host pid this small could also be a pid inside"
        stdout, stderr = proc.communicate(json.dumps(targets).encode(), timeout=60)
    assert proc.returncode == 0, stderr
    out = json.loads(stdout)
    assert (out.pop("ppid"), out.pop("parent")) == (2, "nsbox-launcher"), "the payload's parent is inside"
    assert len(out) == 3 * len(targets) >= 6
    for pid in targets:
        assert (out[f"kill {pid}"], out[f"pidfd_open {pid}"], out[f"/proc/{pid}"]) == ("ESRCH", "ESRCH", False)
