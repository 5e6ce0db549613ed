"""The kernel's riskiest subsystems, tried from inside: each must stay out of reach.

io_uring, userfaultfd, bpf and perf_event_open are where many recent local privilege
escalations began; keyrings are not namespaced; module and kexec loading replace kernel
code; open_by_handle_at is the "shocker" escape; socket families beyond Unix, TCP, UDP
and rtnetlink (AF_PACKET, AF_ALG, AF_VSOCK, raw sockets, SCTP, ...) are attack surface
and, for a family the kernel has as a module, make the host load that module.

Refused calls answer EPERM, refused socket kinds EAFNOSUPPORT. The premise tests show
that, on this host, the same probes reach the kernel without the filter (most succeed),
and that the marker policy's errno replaces EPERM, so that the EPERM is the filter's.
A probe never runs unconfined with a socket family that is a module: that would make
the host load it.
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from tests.conftest import SandboxRun
from tests.security._attack import REFUSED_MARK, marked_policy, reported, syscall_probe

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 structure layouts and numbers")

IO_URING = syscall_probe(
    """
params = ctypes.create_string_buffer(120)
out["io_uring_setup"] = close_if_fd(raw(NR["io_uring_setup"], 4, params))
out["io_uring_enter"] = raw(NR["io_uring_enter"], 0, 1, 0, 0, 0, 0)
out["io_uring_register"] = raw(NR["io_uring_register"], 0, 0, 0, 0)
""",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)


def test_io_uring_is_refused(api_run: SandboxRun) -> None:
    assert reported(api_run(IO_URING)) == dict.fromkeys(
        ["io_uring_setup", "io_uring_enter", "io_uring_register"], "EPERM"
    )


USERFAULTFD = syscall_probe(
    """
out["userfaultfd user-mode-only"] = close_if_fd(raw(NR["userfaultfd"], 1 | os.O_CLOEXEC))  # UFFD_USER_MODE_ONLY
out["userfaultfd"] = close_if_fd(raw(NR["userfaultfd"], os.O_CLOEXEC))
out["/dev/userfaultfd"] = attempt(lambda: os.close(os.open("/dev/userfaultfd", os.O_RDWR)))
""",
    "userfaultfd",
)


def test_userfaultfd_is_refused(api_run: SandboxRun) -> None:
    """userfaultfd pauses the kernel mid-copy at a page fault: the race-widening tool of
    many exploits. Neither the syscall nor the device is there."""
    out = reported(api_run(USERFAULTFD))
    assert out == {"userfaultfd user-mode-only": "EPERM", "userfaultfd": "EPERM", "/dev/userfaultfd": "ENOENT"}


BPF = syscall_probe(
    """
import struct
insns = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)  # r0 = 0; exit
code = ctypes.create_string_buffer(insns, len(insns))
license = ctypes.create_string_buffer(b"GPL")
prog = ctypes.create_string_buffer(struct.pack("<IIQQ", 1, 2, ctypes.addressof(code), ctypes.addressof(license)), 128)
out["BPF_PROG_LOAD socket filter"] = close_if_fd(raw(NR["bpf"], 5, prog, 128))
mapattr = ctypes.create_string_buffer(struct.pack("<IIII", 2, 4, 4, 1), 128)  # BPF_MAP_TYPE_ARRAY
out["BPF_MAP_CREATE array"] = close_if_fd(raw(NR["bpf"], 0, mapattr, 128))
""",
    "bpf",
)


def test_bpf_is_refused(api_run: SandboxRun) -> None:
    out = reported(api_run(BPF))
    assert out == {"BPF_PROG_LOAD socket filter": "EPERM", "BPF_MAP_CREATE array": "EPERM"}


PERF = syscall_probe(
    """
import struct
# PERF_TYPE_SOFTWARE, PERF_COUNT_SW_TASK_CLOCK, disabled | exclude_kernel | exclude_hv: allowed at paranoid 2
attr = ctypes.create_string_buffer(struct.pack("<IIQQQQQ", 1, 128, 1, 0, 0, 0, 1 | 1 << 5 | 1 << 6), 128)
out["perf_event_open self"] = close_if_fd(raw(NR["perf_event_open"], attr, 0, -1, -1, 8))  # PERF_FLAG_FD_CLOEXEC
out["perf_event_open pid 1"] = close_if_fd(raw(NR["perf_event_open"], attr, 1, -1, -1, 8))
""",
    "perf_event_open",
)


def test_perf_event_open_is_refused(api_run: SandboxRun) -> None:
    assert reported(api_run(PERF)) == {"perf_event_open self": "EPERM", "perf_event_open pid 1": "EPERM"}


KEYRINGS = syscall_probe(
    """
SESSION = -3
out["keyctl get session keyring"] = raw(NR["keyctl"], 0, SESSION, 0)
out["keyctl join session"] = raw(NR["keyctl"], 1, b"nsbox-attack")
out["add_key"] = raw(NR["add_key"], b"user", b"nsbox-attack", b"v", 1, SESSION)
out["request_key"] = raw(NR["request_key"], b"user", b"nsbox-attack", 0, 0)
""",
    "keyctl",
    "add_key",
    "request_key",
)


def test_keyrings_are_refused(api_run: SandboxRun) -> None:
    """Keyrings are not namespaced: a key could outlive the sandbox or reach the host's."""
    out = reported(api_run(KEYRINGS))
    assert len(out) == 4 and set(out.values()) == {"EPERM"}, out


MODULES = syscall_probe(
    """
image = ctypes.create_string_buffer(64)
out["init_module"] = raw(NR["init_module"], image, 64, b"")
out["finit_module"] = raw(NR["finit_module"], 0, b"", 0)
out["delete_module"] = raw(NR["delete_module"], b"nsbox_no_such_module", os.O_NONBLOCK)
out["kexec_load"] = raw(NR["kexec_load"], 0, 0, 0, 0)
out["kexec_file_load"] = raw(NR["kexec_file_load"], -1, -1, 0, b"", 0)
""",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
)


def test_module_loading_and_kexec_are_refused(api_run: SandboxRun) -> None:
    out = reported(api_run(MODULES))
    assert len(out) == 5 and set(out.values()) == {"EPERM"}, out


HOST_ADMINISTRATION = syscall_probe(
    """
timex = ctypes.create_string_buffer(208)  # modes = 0: only reads the clock's state
out["reboot (bad magic)"] = raw(NR["reboot"], 0, 0, 0, 0)
out["settimeofday(NULL, NULL)"] = raw(NR["settimeofday"], 0, 0)
out["clock_settime"] = raw(NR["clock_settime"], 0, 0)
out["clock_adjtime read"] = raw(NR["clock_adjtime"], 0, timex)
out["adjtimex read"] = raw(NR["adjtimex"], timex)
out["syslog size"] = raw(NR["syslog"], 10, 0, 0)
out["acct off"] = raw(NR["acct"], 0)
out["swapon"] = raw(NR["swapon"], b"/workspace/swap", 0)
out["swapoff"] = raw(NR["swapoff"], b"/workspace/swap")
out["quotactl"] = raw(NR["quotactl"], 0x800004, b"/", 0, timex)  # Q_GETFMT
out["quotactl_fd"] = raw(NR["quotactl_fd"], 0, 0x800004, 0, timex)
""",
    "reboot",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "syslog",
    "acct",
    "swapon",
    "swapoff",
    "quotactl",
    "quotactl_fd",
)


def test_host_administration_calls_are_refused(api_run: SandboxRun) -> None:
    """The machine's clock, power, swap, accounting, kernel log and quotas (the harmless
    read-only forms included: they tell the kernel's state to an attacker)."""
    out = reported(api_run(HOST_ADMINISTRATION))
    assert len(out) == 11 and set(out.values()) == {"EPERM"}, out


OBSOLETE = syscall_probe(
    """
buf = ctypes.create_string_buffer(64)
out["modify_ldt read"] = raw(NR["modify_ldt"], 0, buf, 64)
out["iopl 3"] = raw(NR["iopl"], 3)
out["ioperm 0x80"] = raw(NR["ioperm"], 0x80, 1, 1)
out["uselib"] = raw(NR["uselib"], b"/usr/lib/x86_64-linux-gnu/libc.so.6")
out["ustat"] = raw(NR["ustat"], os.stat("/").st_dev, buf)
out["sysfs count"] = raw(NR["sysfs"], 3)
out["_sysctl"] = raw(NR["_sysctl"], buf)
out["lookup_dcookie"] = raw(NR["lookup_dcookie"], 0, buf, 64)
out["remap_file_pages"] = raw(NR["remap_file_pages"], 0, 0, 0, 0, 0)
out["vhangup"] = raw(NR["vhangup"])
""",
    "modify_ldt",
    "iopl",
    "ioperm",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "lookup_dcookie",
    "remap_file_pages",
    "vhangup",
)


def test_obsolete_and_hardware_level_calls_are_refused(api_run: SandboxRun) -> None:
    """modify_ldt (CVE-2015-5157 and friends), port I/O, uselib, ..."""
    out = reported(api_run(OBSOLETE))
    assert len(out) == 10 and set(out.values()) == {"EPERM"}, out


FILE_HANDLES = syscall_probe(
    """
AT_FDCWD = -100
handle = ctypes.create_string_buffer(128 + 8)
ctypes.c_uint.from_buffer(handle).value = 128
mount_id = ctypes.c_int()
out["name_to_handle_at"] = raw(NR["name_to_handle_at"], AT_FDCWD, b"/usr/bin/env", handle, ctypes.byref(mount_id), 0)
root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
out["open_by_handle_at"] = close_if_fd(raw(NR["open_by_handle_at"], root, handle, os.O_RDONLY))
""",
    "name_to_handle_at",
    "open_by_handle_at",
)


def test_file_handles_are_refused(api_run: SandboxRun) -> None:
    """open_by_handle_at opens any inode of a filesystem by number, bypassing every path
    and mount: the "shocker" escape from Docker 0.x."""
    assert reported(api_run(FILE_HANDLES)) == {"name_to_handle_at": "EPERM", "open_by_handle_at": "EPERM"}


def test_premise_unconfined_the_kernel_surface_is_reachable(api_run: SandboxRun) -> None:
    """Without the filter, on this host, these calls succeed for an unprivileged process."""
    got = {
        name: reported(api_run(probe, seccomp="unconfined"))
        for name, probe in [("io", IO_URING), ("uffd", USERFAULTFD), ("perf", PERF), ("keys", KEYRINGS),
                            ("old", OBSOLETE), ("admin", HOST_ADMINISTRATION), ("fh", FILE_HANDLES)]
    }  # fmt: skip
    assert got["io"]["io_uring_setup"] == "ok"
    assert got["uffd"]["userfaultfd user-mode-only"] == "ok"
    assert got["perf"]["perf_event_open self"] == "ok"
    assert isinstance(got["keys"]["keyctl get session keyring"], int)
    assert got["old"]["modify_ldt read"] == 0 and isinstance(got["old"]["sysfs count"], int)
    assert isinstance(got["admin"]["adjtimex read"], int) and isinstance(got["admin"]["clock_adjtime read"], int)
    assert got["fh"]["name_to_handle_at"] == 0
    assert got["fh"]["open_by_handle_at"] == "EPERM"  # the kernel's: no CAP_DAC_READ_SEARCH


SURFACE = {
    "IO_URING": IO_URING,
    "USERFAULTFD": USERFAULTFD,
    "BPF": BPF,
    "PERF": PERF,
    "KEYRINGS": KEYRINGS,
    "MODULES": MODULES,
    "HOST_ADMINISTRATION": HOST_ADMINISTRATION,
    "OBSOLETE": OBSOLETE,
    "FILE_HANDLES": FILE_HANDLES,
}


@pytest.mark.parametrize("probe", sorted(SURFACE))
def test_premise_the_refusals_are_the_filters(api_run: SandboxRun, tmp_path: Path, probe: str) -> None:
    out = reported(api_run(SURFACE[probe], seccomp=marked_policy(tmp_path)))
    refused = {k: v for k, v in out.items() if not k.startswith("/dev/")}
    assert refused and set(refused.values()) == {REFUSED_MARK}, out


# --- sockets --------------------------------------------------------------------------------
SOCKETS = """
def sock(family, kind, proto=0):
    return close_if_fd(raw(NR["socket"], family, kind, proto))
"""
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_SEQPACKET, SOCK_PACKET = 1, 2, 3, 5, 10


def socket_probe(cases: dict[str, tuple[int, int, int]]) -> list[str]:
    return syscall_probe(SOCKETS + f"for name, args in {cases!r}.items():\n    out[name] = sock(*args)\n", "socket")


AF_PACKET = {"packet raw": (17, SOCK_RAW, 0x0300), "packet dgram": (17, SOCK_DGRAM, 0x0300)}
AF_VSOCK = {"vsock stream": (40, SOCK_STREAM, 0), "vsock dgram": (40, SOCK_DGRAM, 0), "vsock seq": (40, 5, 0)}
AF_ALG = {"alg": (38, SOCK_SEQPACKET, 0)}
#: Families the kernel usually has as modules: creating one loads it (DCCP CVE-2017-6074, RDS CVE-2010-3904...).
MODULE_FAMILIES = {
    f"family {family}": (family, kind, 0)
    for family, kind in [(3, 5), (4, 2), (5, 2), (6, 5), (8, 2), (9, 5), (11, 5), (12, 5), (15, 3), (21, 5), (26, 2),
                         (29, 3), (30, 5), (31, 1), (35, 2), (36, 2), (37, 2), (39, 2), (41, 2), (42, 2), (43, 1),
                         (44, 3), (45, 2)]
}  # fmt: skip
OTHER_INET = {
    "sctp stream": (2, SOCK_STREAM, 132),
    "sctp seqpacket": (2, SOCK_SEQPACKET, 132),
    "mptcp": (2, SOCK_STREAM, 262),
    "udplite": (2, SOCK_DGRAM, 136),
    "icmp ping": (2, SOCK_DGRAM, 1),
    "icmpv6 ping": (10, SOCK_DGRAM, 58),
    "dccp": (2, 6, 33),
    "tcp as dgram": (2, SOCK_DGRAM, 6),
}
NETLINK = {f"netlink {p}": (16, SOCK_RAW, p) for p in (4, 6, 9, 10, 12, 15, 16)}  # diag xfrm audit ... generic


def test_af_packet_is_refused(api_run: SandboxRun) -> None:
    """AF_PACKET: raw frames on any interface, and a long CVE record (CVE-2016-8655, CVE-2020-14386)."""
    assert reported(api_run(socket_probe(AF_PACKET))) == dict.fromkeys(AF_PACKET, "EAFNOSUPPORT")


def test_af_vsock_is_refused(api_run: SandboxRun) -> None:
    """AF_VSOCK talks to the hypervisor and the host's services (CVE-2021-26708)."""
    assert reported(api_run(socket_probe(AF_VSOCK))) == dict.fromkeys(AF_VSOCK, "EAFNOSUPPORT")


def test_af_alg_is_refused(api_run: SandboxRun) -> None:
    """AF_ALG: the kernel's crypto API from user space (CVE-2016-10147, CVE-2019-8912)."""
    assert reported(api_run(socket_probe(AF_ALG))) == {"alg": "EAFNOSUPPORT"}


def test_families_that_load_kernel_modules_are_refused(api_run: SandboxRun) -> None:
    assert reported(api_run(socket_probe(MODULE_FAMILIES))) == dict.fromkeys(MODULE_FAMILIES, "EAFNOSUPPORT")


def test_raw_inet_sockets_are_refused(api_run: SandboxRun) -> None:
    """Raw IP sockets forge any packet. The filter refuses them with the kernel's own answer
    for a process without CAP_NET_RAW (EPERM) or as a family it does not serve."""
    cases = {
        "raw icmp": (2, SOCK_RAW, 1),
        "raw ip": (2, SOCK_RAW, 255),
        "raw icmpv6": (10, SOCK_RAW, 58),
        "SOCK_PACKET": (2, SOCK_PACKET, 0x0300),
    }
    out = reported(api_run(socket_probe(cases)))
    assert len(out) == 4 and set(out.values()) <= {"EPERM", "EAFNOSUPPORT"}, out


def test_other_inet_protocols_are_refused(api_run: SandboxRun) -> None:
    """AF_INET/AF_INET6 only as TCP or UDP: SCTP, DCCP, UDP-Lite, MPTCP and ping sockets are
    separate kernel code (and SCTP and DCCP modules). They fall to the allowlist's default
    answer, ENOSYS: no errno a filter could give exactly (README: argument rules)."""
    assert reported(api_run(socket_probe(OTHER_INET))) == dict.fromkeys(OTHER_INET, "ENOSYS")


def test_netlink_other_than_route_is_refused(api_run: SandboxRun) -> None:
    """Netlink for routes (getifaddrs) only: not audit, netfilter, xfrm, uevents, sock_diag
    (which lists every socket of the network namespace), generic netlink."""
    out = reported(api_run(socket_probe({**NETLINK, "route raw": (16, SOCK_RAW, 0), "route dgram": (16, 2, 0)})))
    assert out.pop("route raw") == "ok" and out.pop("route dgram") == "ok"
    assert out == dict.fromkeys(NETLINK, "ENOSYS")  # the allowlist's default answer


def test_premise_unconfined_the_built_in_families_are_reachable(api_run: SandboxRun) -> None:
    """Only families built into this kernel (no module would be loaded on the host)."""
    builtin = {**AF_VSOCK, **AF_PACKET, "netlink audit": (16, SOCK_RAW, 9), "netlink xfrm": (16, SOCK_RAW, 6),
               "netlink diag": (16, SOCK_RAW, 4), "raw icmp": (2, SOCK_RAW, 1)}  # fmt: skip
    out = reported(api_run(socket_probe(builtin), seccomp="unconfined"))
    assert out["vsock stream"] == "ok"  # (no datagram transport here: vsock dgram is ENODEV)
    assert out["netlink audit"] == "ok" and out["netlink xfrm"] == "ok" and out["netlink diag"] == "ok"
    assert out["packet raw"] == "EPERM" and out["raw icmp"] == "EPERM"  # the kernel's: no CAP_NET_RAW


ALLOWED_SOCKETS = syscall_probe(
    """
import socket as s
NB_CLOEXEC = s.SOCK_NONBLOCK | s.SOCK_CLOEXEC
for name, args in {"unix stream": (1, 1, 0), "unix dgram": (1, 2, 0), "unix seqpacket": (1, 5, 0),
                   "tcp": (2, 1, 0), "tcp by number": (2, 1, 6), "udp": (2, 2, 0), "udp by number": (2, 2, 17),
                   "tcp6": (10, 1, 0), "udp6": (10, 2, 17), "tcp nonblock cloexec": (2, 1 | NB_CLOEXEC, 0),
                   "udp6 nonblock cloexec": (10, 2 | NB_CLOEXEC, 0)}.items():
    out[name] = close_if_fd(raw(NR["socket"], *args))
a, b = s.socketpair()
a.send(b"x"); out["socketpair"] = b.recv(1).decode()
server = s.create_server(("127.0.0.1", 0))
client = s.create_connection(server.getsockname(), timeout=5)
conn, _ = server.accept()
client.sendall(b"over loopback")
out["tcp loopback"] = conn.recv(64).decode()
""",
    "socket",
)


def test_sockets_the_policy_allows_still_work(api_run: SandboxRun) -> None:
    """The refusals above are not a blanket refusal: Unix, TCP and UDP (also with
    SOCK_NONBLOCK | SOCK_CLOEXEC) are created, and TCP runs over the sandbox's loopback."""
    out = reported(api_run(ALLOWED_SOCKETS))
    assert out.pop("socketpair") == "x" and out.pop("tcp loopback") == "over loopback"
    assert len(out) == 11 and set(out.values()) == {"ok"}, out
