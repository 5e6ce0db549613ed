"""Attacks through the pseudo-filesystems: /proc, /sys, cgroupfs and /dev.

- /proc: the host-wide knobs under /proc/sys (core_pattern runs a program as host root on
  a crash), PID 1's memory and descriptors, the executable of a running process (runc
  CVE-2019-5736 overwrote the host's runc through /proc/self/exe);
- /sys and cgroupfs: a writable cgroup v1 hierarchy's release_agent runs a program as host
  root (CVE-2022-0492); /sys is absent, or read-only and empty of host details;
- /dev: no host device node, none can be made, and no terminal to take over.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import OWN_IDS, SandboxRun, probe_argv
from tests.security._attack import reported, syscall_probe

HOST_KNOBS = ["kernel/core_pattern", "kernel/modprobe", "kernel/sysrq", "vm/drop_caches", "kernel/ns_last_pid",
              "fs/binfmt_misc/register", "kernel/hostname", "net/ipv4/ip_forward"]  # fmt: skip
KNOB_PROBE = probe_argv(f"""
for knob in {HOST_KNOBS!r}:
    path = "/proc/sys/" + knob
    if os.path.exists(path):
        out[knob] = attempt(lambda: os.close(os.open(path, os.O_WRONLY | os.O_TRUNC)))
for name in ["sysrq-trigger", "kcore", "kmsg", "sys/kernel/core_pattern"]:
    path = "/proc/" + name
    if os.path.exists(path):
        out["append " + name] = attempt(lambda: os.close(os.open(path, os.O_WRONLY | os.O_APPEND)))
""")


def test_host_wide_proc_knobs_are_read_only(sandbox_run: SandboxRun) -> None:
    """``echo '|/workspace/x' > /proc/sys/kernel/core_pattern`` would run a payload file as
    host root at the next crash anywhere on the machine."""
    out = reported(sandbox_run(KNOB_PROBE))
    assert "kernel/core_pattern" in out, "the famous one exists on every kernel"
    written = {k: v for k, v in out.items() if not k.startswith("append ")}
    assert set(written.values()) == {"EROFS"}, out
    appended = {k: v for k, v in out.items() if k.startswith("append ")}
    assert set(appended.values()) <= {"EACCES", "EROFS"}, out


MASKED = probe_argv("""
for name in ["kcore", "kmsg", "kallsyms", "keys", "timer_list", "vmallocinfo", "pagetypeinfo", "config.gz"]:
    path = "/proc/" + name
    if os.path.exists(path):
        try:
            with open(path, "rb") as f:
                out[name] = len(f.read(4096))
        except OSError as e:
            out[name] = errno.errorcode[e.errno]
for name in ["acpi", "driver"]:
    out[name] = os.listdir("/proc/" + name) if os.path.isdir("/proc/" + name) else "absent"
""")


def test_masked_proc_files_give_nothing_away(api_run: SandboxRun) -> None:
    """/proc/kcore is the kernel's memory, /proc/kmsg its log, /proc/kallsyms its symbol
    addresses (KASLR): each reads as empty, or cannot be opened."""
    out = reported(api_run(MASKED))
    assert "kallsyms" in out and "kmsg" in out
    assert out.pop("acpi") in ([], "absent") and out.pop("driver") in ([], "absent")
    assert set(out.values()) <= {0, "EACCES"}, out


PID1_FILES = ["mem", "environ", "root/", "cwd/", "exe", "fd/", "maps", "auxv", "stack", "syscall", "pagemap",
              "ns/mnt", "map_files/"]  # fmt: skip
PID1 = probe_argv(f"""
for name in {PID1_FILES!r}:
    path = "/proc/1/" + name
    out[name] = attempt(lambda: os.listdir(path) if path.endswith("/") else os.close(os.open(path, os.O_RDONLY)))
out["mem rw"] = attempt(lambda: os.close(os.open("/proc/1/mem", os.O_RDWR)))
""")


def test_pid1_memory_descriptors_and_root_are_out_of_reach(api_run: SandboxRun) -> None:
    out = reported(api_run(PID1))
    assert len(out) == len(PID1_FILES) + 1
    assert set(out.values()) == {"EACCES"}, out


PID1_OWNER = probe_argv("""
out["init uid"] = int([line for line in open("/proc/1/status") if line.startswith("Uid:")][0].split()[2])
out["owners"] = sorted({os.stat("/proc/1/" + name).st_uid for name in ("status", "mem", "fd", "environ")})
out["overflowuid"] = int(open("/proc/sys/kernel/overflowuid").read())
out["own"] = sorted({os.stat("/proc/self/" + name).st_uid for name in ("status", "mem", "fd")})
out["me"] = os.getuid()
""")


def test_pid1_is_not_dumpable(api_run: SandboxRun) -> None:
    """/proc/PID of a dumpable process belongs to its euid; of a non-dumpable one, to the
    root of the user namespace its memory belongs to, the host's here (shown as the overflow
    uid). Init's euid is 0 inside: were it dumpable, its files would show 0."""
    out = reported(api_run(PID1_OWNER))
    assert out["own"] == [out["me"]], "the payload is dumpable: its own files are its uid's"
    assert out["init uid"] == (out["me"] if OWN_IDS else 0)  # own mode: the payload's uid
    assert out["owners"] == [out["overflowuid"]] != [0], out


PTRACE_INIT = syscall_probe(
    """
import signal, time
PTRACE_ATTACH, PTRACE_SEIZE, PTRACE_DETACH = 16, 0x4206, 17
class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(16)
local, remote = Iovec(ctypes.addressof(buf), 16), Iovec(0x400000, 16)
out["attach 1"] = raw(NR["ptrace"], PTRACE_ATTACH, 1, 0, 0)
out["seize 1"] = raw(NR["ptrace"], PTRACE_SEIZE, 1, 0, 0)
out["process_vm_readv 1"] = raw(NR["process_vm_readv"], 1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
out["attach own child"] = raw(NR["ptrace"], PTRACE_ATTACH, child, 0, 0)
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
""",
    "ptrace",
    "process_vm_readv",
)


def test_pid1_cannot_be_traced_even_when_the_policy_allows_ptrace(api_run: SandboxRun, tmp_path: Path) -> None:
    """An operator's policy may allow ptrace (debuggers); init must still be out of reach:
    another uid, not dumpable. The payload's own child can be traced (the premise)."""
    policy = tmp_path / "debugger.toml"
    policy.write_text('allow = ["ptrace", "process_vm_readv"]\n')
    out = reported(api_run(PTRACE_INIT, seccomp=str(policy)))
    assert out["attach own child"] == 0, "ptrace is allowed and works on what the payload owns"
    assert {k: out[k] for k in ("attach 1", "seize 1", "process_vm_readv 1")} == dict.fromkeys(
        ("attach 1", "seize 1", "process_vm_readv 1"), "EPERM"
    )


EXE = probe_argv("""
for path in ["/proc/self/exe", "/proc/1/exe", "/usr/bin/env", os.path.realpath("/proc/self/exe")]:
    out[path] = attempt(lambda: os.close(os.open(path, os.O_WRONLY)))
    out[path + " O_TRUNC"] = attempt(lambda: os.close(os.open(path, os.O_WRONLY | os.O_TRUNC)))
fd = os.open("/proc/self/exe", os.O_PATH)
out["reopen O_PATH fd"] = attempt(lambda: os.close(os.open(f"/proc/self/fd/{fd}", os.O_RDWR)))
""")


def test_proc_self_exe_cannot_be_opened_for_writing(sandbox_run: SandboxRun) -> None:
    """runc CVE-2019-5736: a container process opened /proc/self/exe (the host's runc) for
    writing and replaced it. Host binaries here are another uid's, on a read-only mount."""
    out = reported(sandbox_run(EXE))
    assert out.pop("/proc/1/exe") == "EACCES" and out.pop("/proc/1/exe O_TRUNC") == "EACCES"
    assert {v for k, v in out.items() if k.endswith("O_TRUNC")} == {"EROFS"}, out
    assert {v for k, v in out.items() if not k.endswith("O_TRUNC")} == {"EACCES"}, out


SYS = probe_argv("""
out["exists"] = os.path.exists("/sys")
if out["exists"]:
    out["read-only"] = bool(os.statvfs("/sys").f_flag & os.ST_RDONLY)
    out["net"] = sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else []
    out["block"] = sorted(os.listdir("/sys/block")) if os.path.isdir("/sys/block") else []
    out["cgroup"] = os.listdir("/sys/fs/cgroup") if os.path.isdir("/sys/fs/cgroup") else []
    out["firmware"] = os.path.exists("/sys/firmware")
    out["uevent_helper"] = attempt(lambda: os.close(os.open("/sys/kernel/uevent_helper", os.O_WRONLY)))
""")


def test_sys_is_absent_or_read_only_and_empty_of_host_details(sandbox_run: SandboxRun) -> None:
    """/sys shows the host's devices, disks, firmware and cgroups, and a writable
    /sys/kernel/uevent_helper runs a program as host root."""
    out = reported(sandbox_run(SYS))
    if out["exists"]:
        assert out["read-only"] and out["cgroup"] == [] and out["block"] == [] and not out["firmware"], out
        assert out["net"] in ([], ["lo"]) and out["uevent_helper"] in ("ENOENT", "EROFS", "EACCES"), out


PSEUDO_MOUNTS = syscall_probe(
    """
os.makedirs("/tmp/m", exist_ok=True)
for fstype, data in [(b"cgroup", b"none,name=nsbox,release_agent=/workspace/x"), (b"cgroup", b"memory"),
                     (b"cgroup2", None), (b"sysfs", None), (b"proc", None), (b"debugfs", None),
                     (b"securityfs", None), (b"bpf", None), (b"devpts", b"newinstance")]:
    out[f"{fstype.decode()} {data!r}"] = raw(NR["mount"], fstype, b"/tmp/m", fstype, 0, data or 0)
""",
    "mount",
)


def test_cgroupfs_sysfs_and_other_pseudo_filesystems_cannot_be_mounted(api_run: SandboxRun) -> None:
    """CVE-2022-0492: a cgroup v1 hierarchy mounted with a release_agent runs it as host
    root when the cgroup empties."""
    out = reported(api_run(PSEUDO_MOUNTS))
    assert len(out) == 9 and set(out.values()) == {"EPERM"}, out


VISIBLE_FILESYSTEMS = probe_argv("""
out["fstypes"] = sorted({line.split(" - ")[1].split()[0] for line in open("/proc/self/mountinfo")})
out["cgroup paths"] = sorted({line.strip().split(":", 2)[2] for line in open("/proc/self/cgroup")})
found = []
for top in ["/sys", "/proc", "/dev", "/tmp", "/workspace"]:
    for root, dirs, files in os.walk(top):
        if root.startswith("/proc/") and root.split("/")[2].isdigit():
            dirs[:] = []
            continue
        found += [os.path.join(root, f) for f in files if f in ("release_agent", "notify_on_release", "cgroup.procs")]
out["cgroup files"] = found
""")
DANGEROUS_FS = {"cgroup", "cgroup2", "sysfs", "debugfs", "tracefs", "securityfs", "bpf", "configfs", "binfmt_misc",
                "efivarfs", "pstore", "fusectl", "hugetlbfs", "nfsd", "rpc_pipefs"}  # fmt: skip


def test_no_cgroupfs_or_kernel_pseudo_filesystem_is_visible(api_run: SandboxRun) -> None:
    """No hierarchy to write release_agent or cgroup.procs into; the sandbox sees itself
    at the root of its cgroup namespace, and no host cgroup path."""
    out = reported(api_run(VISIBLE_FILESYSTEMS))
    assert not set(out["fstypes"]) & DANGEROUS_FS, out["fstypes"]
    assert out["cgroup paths"] == ["/"], out
    assert out["cgroup files"] == []


DEV = probe_argv("""
import stat
nodes = {}
for root, dirs, files in os.walk("/dev"):
    for name in dirs + files:
        path = os.path.join(root, name)
        st = os.lstat(path)
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            nodes[path] = ["chr" if stat.S_ISCHR(st.st_mode) else "blk", os.major(st.st_rdev), os.minor(st.st_rdev)]
out["nodes"] = nodes
for name in ["mem", "kmem", "port", "kmsg", "sda", "vda", "nvme0n1", "xvda", "loop0", "loop-control", "kvm",
             "fuse", "net/tun", "userfaultfd", "console", "tty0", "tty1", "vcs", "mapper/control", "dri/card0",
             "vhost-net", "vsock", "hpet", "rtc0", "cpu/0/msr", "snapshot", "watchdog", "uinput", "hidraw0"]:
    out["/dev/" + name] = attempt(lambda: os.close(os.open("/dev/" + name, os.O_RDONLY | os.O_NONBLOCK)))
""")
HARMLESS = {(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)}  # null zero full random urandom tty ptmx


def test_no_host_device_node_is_reachable(sandbox_run: SandboxRun) -> None:
    out = reported(sandbox_run(DEV))
    nodes = out.pop("nodes")
    assert all(kind == "chr" for kind, _, _ in nodes.values()), nodes
    assert {(major, minor) for _, major, minor in nodes.values()} - HARMLESS <= set(), nodes
    assert set(out.values()) == {"ENOENT"}, out


MKNOD = probe_argv("""
import stat
for where in ["/tmp", "/workspace", "/dev/shm"]:
    out[where + " block 8:0"] = attempt(lambda: os.mknod(where + "/sda", stat.S_IFBLK | 0o600, os.makedev(8, 0)))
    out[where + " char 1:1"] = attempt(lambda: os.mknod(where + "/mem", stat.S_IFCHR | 0o600, os.makedev(1, 1)))
out["/dev char 1:1"] = attempt(lambda: os.mknod("/dev/mem", stat.S_IFCHR | 0o600, os.makedev(1, 1)))
out["/dev file"] = attempt(lambda: os.close(os.open("/dev/evil", os.O_CREAT | os.O_WRONLY, 0o600)))
out["/tmp fifo"] = attempt(lambda: os.mknod("/tmp/fifo", stat.S_IFIFO | 0o600))
""")


def test_device_nodes_cannot_be_made(api_run: SandboxRun) -> None:
    """mknod of /dev/sda or /dev/mem anywhere writable: no CAP_MKNOD (and every writable
    mount is nodev). /dev itself is read-only. The FIFO shows mknod itself reaches the kernel."""
    out = reported(api_run(MKNOD))
    assert out.pop("/tmp fifo") == "ok"
    assert out.pop("/dev char 1:1") == "EROFS" and out.pop("/dev file") == "EROFS"
    assert len(out) == 6 and set(out.values()) == {"EPERM"}, out
