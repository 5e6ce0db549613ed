"""The launcher (the process that starts every run, at the payload's own privilege), attacked
from inside: the payload shares its uid, so it may signal it, but it may not read, trace or
take it over, and whatever it does to it costs only its own session time.
"""

from __future__ import annotations

import json
import platform

import pytest

import nsbox
from tests.conftest import require_sandbox
from tests.security._attack import syscall_probe

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 syscall numbers")

REACH_THE_LAUNCHER = syscall_probe(
    """
import signal
launcher = os.getppid()
out["name"] = open(f"/proc/{launcher}/comm").read().strip()
for name in ("mem", "environ", "maps", "fd", "cwd", "root", "exe"):
    path = f"/proc/{launcher}/{name}"
    out[name] = attempt(lambda: os.listdir(path) if name == "fd" else os.close(os.open(path, os.O_RDONLY)))
out["ptrace attach"] = raw(NR["ptrace"], 16, launcher, 0, 0)  # PTRACE_ATTACH
buf = ctypes.create_string_buffer(8)
local = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)
remote = (ctypes.c_void_p * 2)(0x400000, 8)
out["process_vm_readv"] = raw(
    NR["process_vm_readv"], launcher, ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0
)
out["pidfd_getfd"] = raw(NR["pidfd_getfd"], os.pidfd_open(launcher), 3, 0)
fields = ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp")
out["status"] = {k: status_field(k, f"/proc/{launcher}/status") for k in fields}
out["uid"] = status_field("Uid", f"/proc/{launcher}/status").split()[0]
""",
    "ptrace",
    "process_vm_readv",
    "pidfd_getfd",
)


def test_the_payload_cannot_read_trace_or_take_over_the_launcher() -> None:
    require_sandbox()
    with nsbox.NsSandbox() as sandbox:
        result = sandbox.run(REACH_THE_LAUNCHER, capture_output=True)
    assert result.ok, result.stderr
    out = json.loads(result.stdout or b"")
    assert out["name"] == "nsbox-launcher"
    # Not dumpable: its /proc files belong to root, whatever uid it runs as.
    for name in ("mem", "environ", "maps", "fd", "cwd", "root", "exe"):
        assert out[name] in ("EACCES", "EPERM"), (name, out[name])
    assert out["ptrace attach"] == "EPERM" and out["process_vm_readv"] == "EPERM"
    assert out["pidfd_getfd"] == "EPERM"
    # And it is fenced like a payload: taking it over would give nothing more.
    assert out["status"] == {
        "CapEff": "0000000000000000",
        "CapPrm": "0000000000000000",
        "CapBnd": "0000000000000000",
        "NoNewPrivs": "1",
        "Seccomp": "2",
    }
    assert out["uid"] == "1000"  # the payload's: its /proc files are root's all the same


def test_a_payload_that_kills_the_launcher_still_gets_its_own_result() -> None:
    """Its runs are reparented to init, which reaps and reports them; the next run gets a
    new launcher."""
    require_sandbox()
    with nsbox.NsSandbox() as sandbox:
        # (after a moment: the launcher has reported the run's start by then, see below)
        first = sandbox.run(
            ["sh", "-c", "echo $PPID; sleep 0.1; kill -9 $PPID; sleep 0.2; exit 7"], capture_output=True
        )
        assert first.status is nsbox.Status.EXIT and first.exit_code == 7
        second = sandbox.run(["sh", "-c", "echo $PPID; cat /proc/$PPID/comm"], capture_output=True)
        assert second.ok
        old_launcher = (first.stdout or b"").split()
        new_launcher, name = (second.stdout or b"").split()
        assert name == b"nsbox-launcher" and [new_launcher] != old_launcher, "a new launcher"
        # a Python cell as well (the kernel is started the same way)
        assert sandbox.execute_code("6 * 7").value == "42"


@pytest.mark.parametrize("signal_name", ["STOP", "TSTP"])
def test_a_stopped_launcher_is_replaced(signal_name: str) -> None:
    """Stopped, it could report nothing more: init kills it, reports its runs itself and
    starts another (else the run would last until its timeout)."""
    require_sandbox()
    with nsbox.NsSandbox(timeout=20) as sandbox:
        stopping = sandbox.run(["sh", "-c", f"sleep 0.1; kill -{signal_name} $PPID; exit 3"])
        assert stopping.status is nsbox.Status.EXIT and stopping.exit_code == 3 and stopping.wall_s < 5
        assert sandbox.run(["true"]).ok
        assert sandbox.execute_code("1 + 1").value == "2"


@pytest.mark.parametrize("signal_name", ["KILL", "STOP"])
def test_a_launcher_stopped_or_killed_at_once_costs_only_that_runs_verdict(signal_name: str) -> None:
    """Before the launcher has reported the start, init knows no pid for the run: such a run
    ends at once as killed (its payload goes on in the background), and nothing else is hurt."""
    require_sandbox()
    with nsbox.NsSandbox(timeout=20) as sandbox:
        for _ in range(5):
            result = sandbox.run(["sh", "-c", f"kill -{signal_name} $PPID; exit 3"])
            assert result.wall_s < 5, "no wait for a timeout"
            assert (result.status, result.exit_code) in ((nsbox.Status.EXIT, 3), (nsbox.Status.SIGNAL, 137))
            assert sandbox.run(["true"]).ok


def test_a_run_that_cannot_start_says_why() -> None:
    require_sandbox()
    with nsbox.NsSandbox() as sandbox:
        missing = sandbox.run(["no-such-program"])
        assert missing.status is nsbox.Status.ERROR and missing.exit_code == 127
        assert "no-such-program" in (missing.error or "") or "ENOENT" in (missing.error or "")
        not_executable = sandbox.run(["/etc/passwd"])
        assert not_executable.exit_code == 126
        bad_cwd = sandbox.run(["true"], cwd="/no/such/dir")
        assert bad_cwd.status is nsbox.Status.ERROR and "chdir" in (bad_cwd.error or "")
        assert sandbox.run(["true"]).ok
