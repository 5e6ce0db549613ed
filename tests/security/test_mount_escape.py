"""Attacks on the read-only root from inside; each must fail.

The premise first (``test_premise_*``): a read-only bind made in a user namespace can be
made writable again by a process that keeps its capabilities in that same namespace,
and cannot once the mounts have been copied into a nested one (they are locked). nsbox
relies on both: the payload has no capabilities, and init itself lives in a nested user
namespace whose copies of the mounts are locked.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from nsbox import _linux
from tests.conftest import OWN_IDS, SandboxRun, probe_argv, require_sandbox

MS_REMOUNT_BIND = _linux.MS_REMOUNT | _linux.MS_BIND


def _in_fresh_userns(body: str) -> str:
    """Fork; in the child, unshare user+mount (mapping our own uid to 0), run body's
    steps (``bind-ro``, ``nest``, ``remount-rw``) and report the remount's outcome."""
    read_fd, write_fd = os.pipe()
    target = tempfile.mkdtemp()  # here: removed below (the child's mounts die with its namespace)
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        result = b"?"
        try:
            uid, gid = os.geteuid(), os.getegid()
            _enter_userns(uid, gid)
            _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
            for action in body.split():
                if action == "bind-ro":
                    _linux.mount(target, target, None, _linux.MS_BIND)
                    _linux.mount(None, target, None, MS_REMOUNT_BIND | _linux.MS_RDONLY)
                elif action == "nest":
                    _enter_userns(0, 0)
            try:
                _linux.mount(None, target, None, MS_REMOUNT_BIND)
                result = b"rw"
            except OSError as exc:
                result = os.strerror(exc.errno or 0).encode()
        finally:
            os.write(write_fd, result)
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    os.rmdir(target)
    with os.fdopen(read_fd, "rb") as f:
        return f.read().decode()


def _enter_userns(outer_uid: int, outer_gid: int) -> None:
    _linux.unshare(_linux.CLONE_NEWUSER | _linux.CLONE_NEWNS)
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {outer_uid} 1"), ("gid_map", f"0 {outer_gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def test_premise_caps_in_the_same_userns_can_remount_rw() -> None:
    require_sandbox()
    assert _in_fresh_userns("bind-ro") == "rw"


def test_premise_a_nested_userns_locks_the_mounts() -> None:
    require_sandbox()
    assert _in_fresh_userns("bind-ro nest") == os.strerror(1)  # EPERM


REMOUNT_ATTACKS = """
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC = 1, 32, 4096, 16384
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
def call(rc):
    if rc != 0:
        raise OSError(ctypes.get_errno(), "")
for path in ["/", "/usr", "/etc/ld.so.cache", "/etc", "/dev", "/proc/sys", "/proc/kcore"]:
    p = path.encode()
    out["remount-bind-rw " + path] = attempt(lambda: call(libc.mount(None, p, None, MS_REMOUNT | MS_BIND, None)))
    out["remount-sb-rw " + path] = attempt(lambda: call(libc.mount(None, p, None, MS_REMOUNT, None)))
    out["umount " + path] = attempt(lambda: call(libc.umount2(p, 2)))
    out["bind-over " + path] = attempt(lambda: call(libc.mount(b"/workspace", p, None, MS_BIND, None)))
class MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("set", "clr", "prop", "userns")]
attr = MountAttr(0, 1, 0, 0)  # clear MOUNT_ATTR_RDONLY
libc.syscall.restype = ctypes.c_long
out["mount_setattr-clear-ro /usr"] = attempt(
    lambda: call(libc.syscall(442, -100, b"/usr", 0x8000, ctypes.byref(attr), ctypes.sizeof(attr))))
out["new userns"] = attempt(lambda: call(libc.unshare(0x10000000)))
out["new userns+mountns"] = attempt(lambda: call(libc.unshare(0x10000000 | 0x00020000)))
out["tmpfs over /usr"] = attempt(lambda: call(libc.mount(b"tmpfs", b"/usr", b"tmpfs", 0, None)))
"""


def test_payload_cannot_get_write_access_back(sandbox_run: SandboxRun) -> None:
    out = sandbox_run(probe_argv(REMOUNT_ATTACKS)).json()
    assert out, "the probe reported nothing"
    succeeded = {attack: result for attack, result in out.items() if result == "ok"}
    assert succeeded == {}, succeeded
    # Creating a user namespace is refused by the limit nsbox sets (ENOSPC), not just by policy.
    assert out["new userns"] in ("ENOSPC", "EPERM")


PROC_KNOBS = ["/proc/sys/kernel/hostname", "/proc/sys/user/max_user_namespaces", "/proc/sysrq-trigger"]


@pytest.mark.parametrize("path", [p for p in PROC_KNOBS if os.path.exists(p)])  # sysrq: not on every kernel
def test_proc_knobs_are_not_writable(sandbox_run: SandboxRun, path: str) -> None:
    out = sandbox_run(probe_argv(f'out["w"] = attempt(lambda: open({path!r}, "w").write("1"))')).json()
    assert out["w"] in ("EROFS", "EACCES", "EPERM"), out


def test_dangerous_proc_files_are_masked(sandbox_run: SandboxRun) -> None:
    out = sandbox_run(
        probe_argv("""
for name in ["kcore", "keys", "timer_list", "sched_debug", "kallsyms"]:
    path = "/proc/" + name
    if os.path.exists(path):
        out[name] = os.stat(path).st_rdev == os.stat("/dev/null").st_rdev
out["acpi_empty"] = not os.path.exists("/proc/acpi") or os.listdir("/proc/acpi") == []
""")
    ).json()
    assert out.pop("acpi_empty")
    assert out and all(out.values()), out


def test_init_is_out_of_reach(sandbox_run: SandboxRun) -> None:
    """The payload cannot look into, signal or trace PID 1."""
    out = sandbox_run(
        probe_argv("""
import signal
out["environ"] = attempt(lambda: open("/proc/1/environ").read())
out["root"] = attempt(lambda: os.listdir("/proc/1/root/"))
out["fd"] = attempt(lambda: os.listdir("/proc/1/fd"))
out["mem"] = attempt(lambda: open("/proc/1/mem", "rb"))
out["kill"] = attempt(lambda: os.kill(1, signal.SIGKILL))
out["ptrace"] = "ok" if libc.ptrace(16, 1, 0, 0) == 0 else errno.errorcode[ctypes.get_errno()]  # PTRACE_ATTACH
""")
    ).json()
    assert out == {
        "environ": "EACCES",
        "root": "EACCES",
        "fd": "EACCES",
        "mem": "EACCES",
        # Own mode: init shares the payload's uid, so the kernel takes the signal, and drops
        # it (a pid namespace's init gets no SIGKILL from inside); this run's output came
        # back through init, so it lives.
        "kill": "ok" if OWN_IDS else "EPERM",
        "ptrace": "EPERM",
    }


def test_kill_everything_from_inside_reaches_only_the_sandbox(api_run: SandboxRun) -> None:
    import nsbox

    with nsbox.NsSandbox() as sandbox:
        result = sandbox.run(["sh", "-c", "kill -KILL -1; kill -KILL 0; echo survived"], capture_output=True)
        assert result.status in (nsbox.Status.SIGNAL, nsbox.Status.OK)
        assert sandbox.run(["true"]).ok  # init and the supervisor are untouched
    assert os.getpid() > 0  # and so is this test process, which would be dead otherwise
