"""Escapes through namespaces, mounts and other processes, tried from inside.

A payload that could make a namespace of its own would regain capabilities in it (a new
user namespace) and from there the kernel's mount and network code; one that could join
another namespace (setns) or reach another process's memory (ptrace, process_vm_*) could
leave the sandbox. The filter refuses each of these calls with EPERM; the premise tests
show that they reach the kernel without it (some succeed) and that the marker policy's
errno comes back instead of EPERM, so that the EPERM is the filter's. Last, the network
namespace: the host's loopback services and abstract Unix sockets are out of reach.
"""

from __future__ import annotations

import json
import platform
import secrets
import socket
from pathlib import Path

import pytest

from tests.conftest import SandboxRun, probe_argv
from tests.security._attack import REFUSED_MARK, marked_policy, reported, syscall_probe

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 syscall conventions")

NAMESPACES = {
    "mnt": 0x00020000,
    "cgroup": 0x02000000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "user": 0x10000000,
    "pid": 0x20000000,
    "net": 0x40000000,
    "time": 0x00000080,
}


@pytest.mark.parametrize("ns", sorted(NAMESPACES))
def test_unshare_of_each_namespace_is_refused(api_run: SandboxRun, ns: str) -> None:
    out = reported(api_run(syscall_probe(f'out["r"] = raw(NR["unshare"], {NAMESPACES[ns]})', "unshare")))
    assert out == {"r": "EPERM"}


SETNS = syscall_probe(
    """
for ns in ["mnt", "uts", "ipc", "user", "pid", "net", "cgroup", "time"]:
    fd = os.open(f"/proc/self/ns/{ns}", os.O_RDONLY)
    out["setns own " + ns] = raw(NR["setns"], fd, 0)
    os.close(fd)
    out["open /proc/1/ns/" + ns] = attempt(lambda: os.close(os.open(f"/proc/1/ns/{ns}", os.O_RDONLY)))
pidfd = raw(NR["pidfd_open"], 1, 0)
out["pidfd_open 1"] = "ok" if isinstance(pidfd, int) else pidfd
out["setns pidfd of init"] = raw(NR["setns"], pidfd, 0x00020000 | 0x40000000) if isinstance(pidfd, int) else "no pidfd"
""",
    "setns",
    "pidfd_open",
)


def test_setns_is_refused_and_init_namespaces_cannot_be_opened(api_run: SandboxRun) -> None:
    """setns(2) by namespace file or by pidfd of PID 1: EPERM; and PID 1's namespace files
    cannot even be opened (it is another, non-dumpable uid)."""
    out = reported(api_run(SETNS))
    assert out.pop("pidfd_open 1") == "ok", "a pidfd of init is no secret: setns must still refuse it"
    opens = {k: out.pop(k) for k in list(out) if k.startswith("open")}
    assert set(opens.values()) == {"EACCES"}, opens
    assert len(out) == 9 and set(out.values()) == {"EPERM"}, out


MOUNT_API = syscall_probe(
    """
AT_FDCWD = -100
attr = ctypes.create_string_buffer(32)
out["fsopen tmpfs"] = close_if_fd(raw(NR["fsopen"], b"tmpfs", 0))
out["fsopen cgroup2"] = close_if_fd(raw(NR["fsopen"], b"cgroup2", 0))
out["fsconfig"] = raw(NR["fsconfig"], 3, 6, 0, 0, 0)  # FSCONFIG_CMD_CREATE on an fd that is no fs context
out["fsmount"] = close_if_fd(raw(NR["fsmount"], 3, 0, 0))
out["fspick /"] = close_if_fd(raw(NR["fspick"], AT_FDCWD, b"/", 0))
out["open_tree clone /usr"] = close_if_fd(raw(NR["open_tree"], AT_FDCWD, b"/usr", 1 | 0x8000))
out["move_mount"] = raw(NR["move_mount"], AT_FDCWD, b"/usr", AT_FDCWD, b"/tmp", 0)
out["mount_setattr clear ro"] = raw(NR["mount_setattr"], AT_FDCWD, b"/", 0x8000, attr, 32)
""",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "open_tree",
    "move_mount",
    "mount_setattr",
)


def test_the_new_mount_api_is_refused(api_run: SandboxRun) -> None:
    """fsopen, fsconfig, fsmount, fspick, open_tree, move_mount, mount_setattr: the calls a
    deny-list once forgot (Flatpak, CVE-2021-41133)."""
    out = reported(api_run(MOUNT_API))
    assert len(out) == 8 and set(out.values()) == {"EPERM"}, out


OLD_MOUNT_API = syscall_probe(
    """
MS_BIND, MS_REC, MS_MOVE, MNT_DETACH = 4096, 16384, 8192, 2
out["mount tmpfs"] = raw(NR["mount"], b"tmpfs", b"/tmp", b"tmpfs", 0, 0)
out["mount proc"] = raw(NR["mount"], b"proc", b"/tmp", b"proc", 0, 0)
out["bind / over /tmp"] = raw(NR["mount"], b"/", b"/tmp", 0, MS_BIND | MS_REC, 0)
out["move /proc"] = raw(NR["mount"], b"/proc", b"/tmp", 0, MS_MOVE, 0)
out["umount2 /proc"] = raw(NR["umount2"], b"/proc", MNT_DETACH)
out["umount2 /proc/sys"] = raw(NR["umount2"], b"/proc/sys", MNT_DETACH)
out["pivot_root"] = raw(NR["pivot_root"], b"/tmp", b"/tmp")
out["chroot"] = raw(NR["chroot"], b"/tmp")
""",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
)


def test_mount_umount_pivot_root_and_chroot_are_refused(api_run: SandboxRun) -> None:
    """Unmounting a mask (/proc/sys) would uncover the host's knobs; chroot and pivot_root
    are the first steps of classic chroot breakouts."""
    out = reported(api_run(OLD_MOUNT_API))
    assert len(out) == 8 and set(out.values()) == {"EPERM"}, out


OTHER_PROCESSES = syscall_probe(
    """
PTRACE_TRACEME, PTRACE_ATTACH, PTRACE_SEIZE = 0, 16, 0x4206
class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(16)
src = ctypes.create_string_buffer(b"secret", 16)
local, remote = Iovec(ctypes.addressof(buf), 16), Iovec(ctypes.addressof(src), 16)
me = os.getpid()
out["ptrace attach 1"] = raw(NR["ptrace"], PTRACE_ATTACH, 1, 0, 0)
out["ptrace seize 1"] = raw(NR["ptrace"], PTRACE_SEIZE, 1, 0, 0)
out["ptrace traceme"] = raw(NR["ptrace"], PTRACE_TRACEME, 0, 0, 0)
out["process_vm_readv self"] = raw(NR["process_vm_readv"], me, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
out["process_vm_writev self"] = raw(NR["process_vm_writev"], me, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
out["process_vm_readv 1"] = raw(NR["process_vm_readv"], 1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
out["kcmp self"] = raw(NR["kcmp"], me, me, 1, 0, 0)  # KCMP_VM
pidfd = raw(NR["pidfd_open"], me, 0)
out["pidfd_getfd self"] = close_if_fd(raw(NR["pidfd_getfd"], pidfd, 0, 0))
out["process_madvise self"] = raw(NR["process_madvise"], pidfd, ctypes.byref(local), 1, 20, 0)  # MADV_COLD
out["process_mrelease self"] = raw(NR["process_mrelease"], pidfd, 0)
""",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_open",
    "pidfd_getfd",
    "process_madvise",
    "process_mrelease",
)


def test_ptrace_and_other_processes_memory_are_refused(api_run: SandboxRun) -> None:
    """ptrace of init or of oneself, reading and writing process memory, comparing
    kernel objects, stealing another process's fds (pidfd_getfd)."""
    out = reported(api_run(OTHER_PROCESSES))
    assert len(out) == 10 and set(out.values()) == {"EPERM"}, out


def test_premise_unconfined_the_calls_reach_the_kernel(api_run: SandboxRun) -> None:
    """Without the filter, the calls on oneself succeed, and unshare meets the kernel's own
    limits (ENOSPC from max_user_namespaces, EPERM without CAP_SYS_ADMIN)."""
    out = reported(api_run(OTHER_PROCESSES, seccomp="unconfined"))
    assert out["ptrace traceme"] == 0
    assert out["process_vm_readv self"] == 16 and out["process_vm_writev self"] == 16
    assert out["kcmp self"] == 0 and out["pidfd_getfd self"] == "ok"
    assert out["ptrace attach 1"] == "EPERM"  # init is out of reach by the kernel's rules too
    user = reported(api_run(syscall_probe(f'out["r"] = raw(NR["unshare"], {NAMESPACES["user"]})', "unshare"),
                            seccomp="unconfined"))  # fmt: skip
    assert user == {"r": "ENOSPC"}


@pytest.mark.parametrize("probe", ["SETNS", "MOUNT_API", "OLD_MOUNT_API", "OTHER_PROCESSES"])
def test_premise_the_refusals_are_the_filters(api_run: SandboxRun, tmp_path: Path, probe: str) -> None:
    """Under a policy whose refusal errno is a marker, every refusal above answers with the
    marker: the EPERM seen under the default is the filter's, not (only) the kernel's."""
    out = reported(api_run(globals()[probe], seccomp=marked_policy(tmp_path)))
    refused = {k: v for k, v in out.items() if not k.startswith(("open ", "pidfd_open"))}
    assert refused and set(refused.values()) == {REFUSED_MARK}, out


REACH_HOST = probe_argv("""
import socket
target = json.loads(sys.stdin.read())
a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
out["abstract unix"] = attempt(lambda: a.connect(b"\\0" + target["abstract"].encode()))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.settimeout(5)
out["tcp 127.0.0.1"] = attempt(lambda: t.connect(("127.0.0.1", target["port"])))
""")


def test_the_hosts_loopback_and_abstract_unix_sockets_are_unreachable(api_run: SandboxRun) -> None:
    """A host service listening on 127.0.0.1 or on an abstract Unix socket (which has no
    file to protect it: containerd-shim, CVE-2020-15257) is in the host's network
    namespace; the sandbox's loopback and abstract namespace are its own."""
    name = f"nsbox-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as abstract, socket.create_server(("127.0.0.1", 0)) as tcp:
        abstract.bind(b"\0" + name.encode())
        abstract.listen()
        target = {"abstract": name, "port": tcp.getsockname()[1]}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as premise:
            premise.connect(b"\0" + name.encode())  # reachable from the host's namespace
        out = reported(api_run(REACH_HOST, input=json.dumps(target).encode()))
    assert out == {"abstract unix": "ECONNREFUSED", "tcp 127.0.0.1": "ECONNREFUSED"}
