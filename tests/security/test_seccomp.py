"""Attacks on the syscall filter itself: getting out from under it, around it, or past
its argument checks.

- integrity: the filter is on every thread and every child, survives execve, and the
  payload can neither remove it nor loosen it (a filter it adds can only restrict more);
- other ABIs: i386 through ``int $0x80`` and x32 numbers must not be read as native
  calls: the process is killed (SIGSYS);
- high-bit arguments: the kernel reads an ``int`` argument's low 32 bits while seccomp
  sees 64, so ``clone``, ``socket``, ``ioctl`` and ``personality`` are tried with high
  bits set around a forbidden value.

Each refusal has a premise test (``test_premise_*``) showing that the same probe reaches
the kernel (and succeeds, or gets the kernel's own answer) without the filter, or gets
the filter's marker errno, so that the assertion discriminates.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from tests.conftest import SandboxRun
from tests.security._attack import (
    REFUSED_MARK,
    SIGSYS_EXIT,
    UNKNOWN_MARK,
    compile_probe,
    marked_policy,
    reported,
    syscall_probe,
)

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 ABIs and ioctl numbers")

# --- integrity ------------------------------------------------------------------------------
STATUS = syscall_probe(
    """
out["nnp"] = status_field("NoNewPrivs")
out["seccomp"] = status_field("Seccomp")
out["filters"] = int(status_field("Seccomp_filters"))
out["ptrace"] = raw(NR["ptrace"], 0, 0, 0, 0)  # PTRACE_TRACEME
""",
    "ptrace",
)


def test_every_run_has_no_new_privs_and_a_filter(sandbox_run: SandboxRun) -> None:
    out = sandbox_run(STATUS)
    got = reported(out)
    assert out.report["seccomp"] == "default"
    assert got["nnp"] == "1" and got["seccomp"] == "2" and got["filters"] >= 1, got
    assert got["ptrace"] == "EPERM"


SECOND_THREAD = syscall_probe(
    """
import threading
done, ready = threading.Event(), threading.Event()
def body():
    out["thread unshare"] = raw(NR["unshare"], 0x10000000)
    out["thread ptrace"] = raw(NR["ptrace"], 0, 0, 0, 0)
    out["thread mode"] = status_field("Seccomp", "/proc/thread-self/status")
    out["tid differs"] = threading.get_native_id() != os.getpid()
    ready.set()
    done.wait()
t = threading.Thread(target=body)
t.start()
ready.wait()
out["tasks"] = [status_field("Seccomp", f"/proc/self/task/{t}/status") for t in os.listdir("/proc/self/task")]
done.set()
t.join()
""",
    "unshare",
    "ptrace",
)


def test_the_filter_is_on_a_second_thread(api_run: SandboxRun) -> None:
    """A thread started by the payload has the filter: its syscalls are refused just the
    same, and both tasks of the process show it."""
    out = reported(api_run(SECOND_THREAD))
    assert out["tid differs"]
    assert out["thread unshare"] == "EPERM" and out["thread ptrace"] == "EPERM", out
    assert out["thread mode"] == "2"
    assert out["tasks"] == ["2", "2"], out


FORKED_CHILD = syscall_probe(
    """
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    result = {"keyctl": raw(NR["keyctl"], 0, -3, 0), "unknown": raw(NR["get_mempolicy"], 0, 0, 0, 0, 0),
              "seccomp": status_field("Seccomp")}
    os.write(w, json.dumps(result).encode())
    os._exit(0)
os.close(w)
_, status = os.waitpid(pid, 0)
out["child"] = json.loads(os.read(r, 4096))
out["status"] = status
""",
    "keyctl",
    "get_mempolicy",
)


def test_the_filter_is_inherited_by_a_forked_child(api_run: SandboxRun) -> None:
    out = reported(api_run(FORKED_CHILD))
    assert out["status"] == 0
    assert out["child"] == {"keyctl": "EPERM", "unknown": "ENOSYS", "seccomp": "2"}


EXEC_INNER = syscall_probe(
    """
out["pid"] = os.getpid()
out["ptrace"] = raw(NR["ptrace"], 0, 0, 0, 0)
out["seccomp"] = status_field("Seccomp")
out["nnp"] = status_field("NoNewPrivs")
""",
    "ptrace",
)
EXEC_OUTER = syscall_probe(f"""
print(json.dumps({{"pid": os.getpid()}}), flush=True)
os.execv("/usr/bin/env", ["env", *{EXEC_INNER!r}])
""")


def test_the_filter_survives_a_further_execve(api_run: SandboxRun) -> None:
    """The payload execs another program (a fresh interpreter): the filter is still on."""
    out = api_run(EXEC_OUTER)
    assert out.status == "ok", out
    before, after = (json.loads(line) for line in out.stdout.splitlines())
    assert after == {"pid": before["pid"], "ptrace": "EPERM", "seccomp": "2", "nnp": "1"}


SWITCH_OFF = syscall_probe(
    """
PR_GET_SECCOMP, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS = 21, 22, 38, 39
out["clear nnp"] = raw(NR["prctl"], PR_SET_NO_NEW_PRIVS, 0, 0, 0, 0)
out["nnp"] = raw(NR["prctl"], PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
out["seccomp disabled"] = raw(NR["prctl"], PR_SET_SECCOMP, 0, 0, 0, 0)  # SECCOMP_MODE_DISABLED
out["mode"] = raw(NR["prctl"], PR_GET_SECCOMP, 0, 0, 0, 0)
out["ptrace"] = raw(NR["ptrace"], 0, 0, 0, 0)
""",
    "prctl",
    "ptrace",
)


def test_no_new_privs_and_the_filter_cannot_be_switched_off(api_run: SandboxRun) -> None:
    out = reported(api_run(SWITCH_OFF))
    assert out == {"clear nnp": "EINVAL", "nnp": 1, "seccomp disabled": "EINVAL", "mode": 2, "ptrace": "EPERM"}


STACKED = syscall_probe(
    """
class Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]
LD_NR, JEQ, RET = 0x20, 0x15, 0x06
ALLOW, EXDEV = 0x7FFF0000, 0x00050000 | errno.EXDEV
def load(*insns):
    program = (Insn * len(insns))(*insns)
    prog = Prog(len(insns), program)
    return raw(NR["seccomp"], 1, 0, ctypes.byref(prog))  # SECCOMP_SET_MODE_FILTER
before = int(status_field("Seccomp_filters"))
out["allow everything"] = load(Insn(RET, 0, 0, ALLOW))
out["ptrace after"] = raw(NR["ptrace"], 0, 0, 0, 0)
out["unshare after"] = raw(NR["unshare"], 0x20000)
out["getppid refused"] = load(Insn(LD_NR, 0, 0, 0), Insn(JEQ, 0, 1, NR["getppid"]), Insn(RET, 0, 0, EXDEV),
                              Insn(RET, 0, 0, ALLOW))
out["getppid"] = raw(NR["getppid"])
out["added"] = int(status_field("Seccomp_filters")) - before
""",
    "seccomp",
    "ptrace",
    "unshare",
    "getppid",
)


def test_a_filter_the_payload_adds_only_restricts_more(api_run: SandboxRun) -> None:
    """The payload may load filters of its own (a program may sandbox itself), but the
    kernel runs every filter and keeps the strictest answer: an allow-everything filter
    brings nothing back, a refusing one takes effect."""
    out = reported(api_run(STACKED))
    assert out["allow everything"] == 0 and out["getppid refused"] == 0, "both filters were loaded"
    assert out["added"] == 2
    assert out["ptrace after"] == "EPERM" and out["unshare after"] == "EPERM", out
    assert out["getppid"] == "EXDEV", "the payload's own filter took effect"


def test_premise_without_the_filter_the_probes_reach_the_kernel(api_run: SandboxRun) -> None:
    out = api_run(STATUS, seccomp="unconfined")
    assert out.report["seccomp"] == "unconfined"
    assert reported(out) == {"nnp": "1", "seccomp": "0", "filters": 0, "ptrace": 0}
    stacked = reported(api_run(STACKED, seccomp="unconfined"))
    assert stacked["ptrace after"] == 0, "ptrace reached the kernel"
    assert stacked["unshare after"] == "EPERM"  # the kernel's answer: no CAP_SYS_ADMIN


UNKNOWN = syscall_probe(
    """
req = ctypes.create_string_buffer((24).to_bytes(4, "little") + bytes(4) + (2**64 - 1).to_bytes(8, "little") + bytes(8))
ids = ctypes.create_string_buffer(8 * 16)
out["get_mempolicy"] = raw(NR["get_mempolicy"], 0, 0, 0, 0, 0)
out["set_mempolicy"] = raw(NR["set_mempolicy"], 0, 0, 0)  # MPOL_DEFAULT
out["fanotify_init"] = close_if_fd(raw(NR["fanotify_init"], 0, 0))
out["sethostname"] = raw(NR["sethostname"], b"evil", 4)
out["listmount"] = raw(458, req, ids, 16, 0)  # 6.8+: every mount id of the namespace
out["number 1000"] = raw(1000)
""",
    "get_mempolicy",
    "set_mempolicy",
    "fanotify_init",
    "sethostname",
)


def test_syscalls_the_policy_does_not_know_fail_with_enosys(api_run: SandboxRun) -> None:
    """An allowlist: whatever the policy does not name (NUMA policy, fanotify, sethostname,
    the new listmount) answers ENOSYS, as on a kernel without the call."""
    out = reported(api_run(UNKNOWN))
    assert len(out) == 6 and set(out.values()) == {"ENOSYS"}, out


def test_premise_unknown_syscalls_are_answered_by_the_filter(api_run: SandboxRun, tmp_path: Path) -> None:
    out = reported(api_run(UNKNOWN, seccomp=marked_policy(tmp_path)))
    assert out.pop("number 1000") == UNKNOWN_MARK, "even a number that is no syscall at all"
    assert set(out.values()) == {UNKNOWN_MARK}, out
    unconfined = reported(api_run(UNKNOWN, seccomp="unconfined"))
    assert unconfined["get_mempolicy"] == 0 and unconfined["set_mempolicy"] == 0, unconfined


# --- other ABIs -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def int80(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_probe("int80.c", tmp_path_factory.mktemp("int80"))


I386 = {"getpid": 20, "mount": 21, "ptrace": 26, "unshare": 310}
X32 = 0x40000000  # __X32_SYSCALL_BIT


def test_i386_int80_kills_the_process(sandbox_run: SandboxRun, int80: Path) -> None:
    out = sandbox_run(["/probe/int80", str(I386["getpid"])], ro_bind=[f"{int80}:/probe/int80"])
    assert (out.status, out.exit_code) == ("signal", SIGSYS_EXIT), out
    assert out.stdout == b"before\n", "killed at the call, not before and not after"


@pytest.mark.parametrize("name", ["mount", "ptrace", "unshare"])
def test_i386_numbers_of_refused_calls_are_not_read_as_native_ones(api_run: SandboxRun, int80: Path, name: str) -> None:
    """i386's mount (21) is x86_64's access, its ptrace (26) x86_64's msync: both allowed
    natively. A filter that skipped the architecture check would let them through."""
    out = api_run(["/probe/int80", str(I386[name]), "0", "0", "0"], ro_bind=[f"{int80}:/probe/int80"])
    assert (out.status, out.exit_code, out.stdout) == ("signal", SIGSYS_EXIT, b"before\n"), out


@pytest.mark.parametrize(("name", "x32_nr"), [("getpid", 39), ("ptrace", 101)])
def test_x32_syscall_numbers_kill_the_process(api_run: SandboxRun, name: str, x32_nr: int) -> None:
    out = api_run(syscall_probe(f'print("before", flush=True)\nout["r"] = raw({X32 | x32_nr}, 0, 0, 0, 0)'))
    assert (out.status, out.exit_code, out.stdout) == ("signal", SIGSYS_EXIT, b"before\n"), out


def test_premise_other_abis_reach_the_kernel_when_unconfined(api_run: SandboxRun, int80: Path) -> None:
    out = api_run(["/probe/int80", str(I386["getpid"])], ro_bind=[f"{int80}:/probe/int80"], seccomp="unconfined")
    assert out.status == "ok", out
    first, pid = out.stdout.split()
    assert first == b"before" and int(pid) > 1, "the i386 getpid ran"
    x32 = api_run(syscall_probe(f'out["r"] = raw({X32 | 39})'), seccomp="unconfined")
    assert reported(x32)["r"] == "ENOSYS"  # this kernel has no x32 ABI: refused, but the process lives


# --- clone: namespace flags, also behind high bits -----------------------------------------
CLONE_NS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
CLONE_PROBE = """
SIGCHLD = 17
def try_clone(flags):
    r = raw(NR["clone"], flags | SIGCHLD, 0, 0, 0, 0)
    if r == 0:
        os._exit(0)  # the child, should the clone have happened
    if isinstance(r, int):
        os.waitpid(r, 0)
        return "ok"
    return r
for name, flag in FLAGS.items():
    out[name] = try_clone(flag)
    out[name + " |1<<32"] = try_clone(flag | (1 << 32))
    out[name + " |1<<63"] = try_clone(flag | (1 << 63))
"""


def clone_probe(flags: dict[str, int]) -> list[str]:
    return syscall_probe(f"FLAGS = {flags!r}\n{CLONE_PROBE}", "clone")


@pytest.mark.parametrize("flag", sorted(CLONE_NS))
def test_clone_with_a_namespace_flag_is_refused(api_run: SandboxRun, flag: str) -> None:
    """clone(2) with CLONE_NEW*: EPERM, also when the flag hides among high bits (the
    kernel reads only the low 32 bits of clone's flags)."""
    out = reported(api_run(clone_probe({flag: CLONE_NS[flag]})))
    assert out == {flag: "EPERM", f"{flag} |1<<32": "EPERM", f"{flag} |1<<63": "EPERM"}


def test_premise_clone_namespace_flags_are_answered_by_the_filter(api_run: SandboxRun, tmp_path: Path) -> None:
    out = reported(api_run(clone_probe(CLONE_NS), seccomp=marked_policy(tmp_path)))
    assert len(out) == 3 * len(CLONE_NS)
    assert set(out.values()) == {REFUSED_MARK}, out


STILL_WORKS = syscall_probe(
    """
import subprocess, threading
seen = []
t = threading.Thread(target=lambda: seen.append(threading.get_native_id()))
t.start(); t.join()
out["thread"] = bool(seen) and seen[0] != os.getpid()
out["clone3"] = raw(NR["clone3"], 0, 0)
out["subprocess"] = subprocess.run(["sh", "-c", "echo $$"], capture_output=True).stdout.strip().isdigit()
pid = os.fork()
if pid == 0:
    os._exit(7)
out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
""",
    "clone3",
)


def test_threads_forks_and_subprocesses_still_work(api_run: SandboxRun) -> None:
    """The clone rules refuse namespaces, not processes (glibc falls back from clone3)."""
    out = reported(api_run(STILL_WORKS))
    assert out["thread"] and out["subprocess"] and out["fork"] == 7, out
    assert out["clone3"] == "ENOSYS"  # so that glibc falls back to clone, whose flags a filter sees


# --- socket, ioctl and personality with high bits -------------------------------------------
HIGH_BIT_SOCKETS = syscall_probe(
    """
for name, family, kind in [("vsock", 40, 1), ("packet", 17, 3), ("alg", 38, 5), ("bluetooth", 31, 1)]:
    for high in (1 << 32, 1 << 40, 0xFFFFFFFF << 32):
        out[f"{name} {high:#x}"] = close_if_fd(raw(NR["socket"], family | high, kind, 0))
""",
    "socket",
)


def test_socket_families_smuggled_in_high_bits_are_refused(api_run: SandboxRun) -> None:
    """socket(0x1_0000_0028, ...) is AF_VSOCK to the kernel (an int argument)."""
    out = reported(api_run(HIGH_BIT_SOCKETS))
    assert len(out) == 12
    assert set(out.values()) == {"EAFNOSUPPORT"}, out


PTY_IOCTLS = syscall_probe(
    """
master, slave = os.openpty()
c = ctypes.c_char(b"x")
for name, cmd in [("TIOCSTI", 0x5412), ("TIOCLINUX", 0x541C)]:
    for high in (0, 1 << 32, 0xFFFFFFFF << 32):
        out[f"{name} {high:#x}"] = raw(NR["ioctl"], slave, cmd | high, ctypes.byref(c))
winsize = ctypes.create_string_buffer(8)
out["TIOCGWINSZ"] = raw(NR["ioctl"], slave, 0x5413, winsize)
""",
    "ioctl",
)


def test_tiocsti_and_tioclinux_are_refused_also_with_high_bits(api_run: SandboxRun) -> None:
    """On a terminal of the sandbox's own: the requests are refused by number, whatever the
    terminal, and with high bits in ``cmd`` (the kernel reads an unsigned int)."""
    out = reported(api_run(PTY_IOCTLS))
    assert out.pop("TIOCGWINSZ") == 0, "other requests still reach the terminal"
    assert len(out) == 6
    assert set(out.values()) == {"EPERM"}, out


def test_premise_tiocsti_and_tioclinux_reach_the_kernel_unconfined(api_run: SandboxRun) -> None:
    out = reported(api_run(PTY_IOCTLS, seccomp="unconfined"))
    assert out["TIOCLINUX 0x0"] == "ENOTTY"  # the kernel's answer: not a virtual console
    assert out["TIOCSTI 0x0"] == "EPERM"  # the kernel's: not our controlling terminal, no CAP_SYS_ADMIN


PERSONALITY = syscall_probe(
    """
REFUSED = {"READ_IMPLIES_EXEC": 0x0400000, "MMAP_PAGE_ZERO": 0x0100000, "ADDR_NO_RANDOMIZE": 0x0040000,
           "PER_SVR4": 0x68000001}
for name, value in REFUSED.items():
    for high in (0, 1 << 32):
        r = raw(NR["personality"], value | high)
        out[f"{name} {high:#x}"] = r if not isinstance(r, int) else "ok"
        raw(NR["personality"], 0)
out["query"] = raw(NR["personality"], 0xFFFFFFFF)
out["PER_LINUX32"] = raw(NR["personality"], 0x0008)
out["query after"] = raw(NR["personality"], 0xFFFFFFFF)
""",
    "personality",
)


def test_personality_allows_only_harmless_values_also_with_high_bits(api_run: SandboxRun) -> None:
    """READ_IMPLIES_EXEC makes every mapping executable, MMAP_PAGE_ZERO maps page 0 (NULL
    dereference exploits), ADDR_NO_RANDOMIZE turns ASLR off for what the payload runs next:
    refused. Only Docker's values pass: PER_LINUX, PER_LINUX32, UNAME26, both, the query.
    The others fall to the allowlist's default answer, ENOSYS (README: argument rules)."""
    out = reported(api_run(PERSONALITY))
    assert out.pop("query") == 0 and out.pop("PER_LINUX32") == 0, out
    assert out.pop("query after") == 0x0008
    assert len(out) == 8
    assert set(out.values()) == {"ENOSYS"}, out


def test_premise_personality_flags_are_taken_when_unconfined(api_run: SandboxRun) -> None:
    out = reported(api_run(PERSONALITY, seccomp="unconfined"))
    refused = {k: v for k, v in out.items() if " 0x" in k}
    assert len(refused) == 8 and set(refused.values()) == {"ok"}, out
