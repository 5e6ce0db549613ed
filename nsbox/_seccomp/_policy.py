"""The default policy: which syscalls the payload may make, as data, each group with its reason.

An allowlist (Docker's approach, not Flatpak's deny-list, which missed the new mount API:
CVE-2021-41133). A syscall in no group here is *unknown*: it fails with ENOSYS, so libc
falls back as it does on an older kernel. The ``REFUSED`` groups fail with EPERM; they are
named so that the reason for each refusal is written down, and so that an operator's
``allow`` can bring one back knowingly.

Some syscalls are allowed only with some arguments (``CONDITIONAL``). Their integer
arguments are compared on the low 32 bits only, because that is all the kernel reads of
an ``int`` argument while seccomp sees 64 bits: a plain comparison would let
``socket(0x1_0000_0028, ...)`` (AF_VSOCK with a high bit set) through.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Group:
    name: str
    reason: str
    syscalls: tuple[str, ...]


def _group(name: str, reason: str, syscalls: str) -> Group:
    return Group(name, reason, tuple(syscalls.split()))


ALLOWED = (
    _group(
        "files",
        "reading and writing files, directories, pipes and their metadata",
        "read write open openat close close_range creat lseek pread64 pwrite64 readv writev preadv "
        "pwritev preadv2 pwritev2 stat fstat lstat newfstatat statx statfs fstatfs access faccessat faccessat2 "
        "truncate ftruncate fallocate fadvise64 readahead fsync fdatasync sync syncfs sync_file_range getdents "
        "getdents64 getcwd chdir fchdir rename renameat renameat2 mkdir mkdirat rmdir link linkat unlink unlinkat "
        "symlink symlinkat readlink readlinkat chmod fchmod fchmodat fchmodat2 chown fchown lchown fchownat umask "
        "utime utimes futimesat utimensat mknod mknodat dup dup2 dup3 fcntl flock pipe pipe2 sendfile splice tee "
        "vmsplice copy_file_range getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr setxattr lsetxattr "
        "fsetxattr removexattr lremovexattr fremovexattr inotify_init inotify_init1 inotify_add_watch "
        "inotify_rm_watch memfd_create",
    ),
    _group(
        "memory",
        "the process's own address space",
        "brk mmap munmap mprotect mremap msync mincore madvise mlock mlock2 munlock mlockall munlockall membarrier "
        "pkey_mprotect pkey_alloc pkey_free",
    ),
    _group(
        "waiting and time",
        "event loops, timers, clocks, futexes and asynchronous I/O of one's own files",
        "poll ppoll select pselect6 epoll_create epoll_create1 epoll_ctl epoll_wait epoll_pwait epoll_pwait2 "
        "eventfd eventfd2 signalfd signalfd4 timerfd_create timerfd_settime timerfd_gettime nanosleep "
        "clock_nanosleep clock_gettime clock_getres gettimeofday time times getitimer setitimer alarm pause "
        "timer_create timer_settime timer_gettime timer_getoverrun timer_delete futex futex_waitv futex_wake "
        "futex_wait futex_requeue set_robust_list get_robust_list io_setup io_destroy io_getevents io_pgetevents "
        "io_submit io_cancel",
    ),
    _group(
        "processes",
        "starting, running and waiting for processes; the pid namespace bounds what they reach",
        "fork vfork execve execveat exit exit_group wait4 waitid kill tkill tgkill getpid getppid gettid getpgid "
        "setpgid getpgrp getsid setsid set_tid_address arch_prctl prctl rseq restart_syscall pidfd_open "
        "pidfd_send_signal getcpu uname sysinfo getrandom getrusage getrlimit setrlimit prlimit64 sched_yield "
        "sched_getaffinity sched_setaffinity sched_getparam sched_setparam sched_getscheduler sched_setscheduler "
        "sched_get_priority_max sched_get_priority_min sched_rr_get_interval sched_getattr sched_setattr "
        "getpriority setpriority ioprio_get ioprio_set",
    ),
    _group(
        "signals",
        "signal handlers, masks and waits",
        "rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigtimedwait rt_sigqueueinfo rt_tgsigqueueinfo "
        "rt_sigsuspend sigaltstack",
    ),
    _group(
        "identity",
        "reading one's ids and capabilities; the set* calls only drop privilege (there is none to gain)",
        "getuid geteuid getgid getegid getgroups getresuid getresgid setuid setgid setreuid setregid setresuid "
        "setresgid setgroups setfsuid setfsgid capget capset",
    ),
    _group(
        "sockets",
        "using sockets; which ones may be created is decided by the socket and socketpair rules",
        "connect accept accept4 bind listen getsockname getpeername sendto recvfrom sendmsg recvmsg sendmmsg "
        "recvmmsg shutdown setsockopt getsockopt",
    ),
    _group(
        "ipc",
        "System V and POSIX IPC, private to the sandbox's own ipc namespace",
        "shmget shmat shmdt shmctl semget semop semtimedop semctl msgget msgsnd msgrcv msgctl mq_open mq_unlink "
        "mq_timedsend mq_timedreceive mq_notify mq_getsetattr",
    ),
    _group(
        "self-restriction",
        "a program may sandbox itself further (seccomp filters and Landlock only ever add restrictions)",
        "seccomp landlock_create_ruleset landlock_add_rule landlock_restrict_self",
    ),
)

#: Allowed with some arguments only; see ``_filter`` for the exact rules.
CONDITIONAL = (
    _group("clone", "threads and processes, but no new namespace (clone flags CLONE_NEW*)", "clone"),
    _group("ioctl", "any request but TIOCSTI and TIOCLINUX, which type into a terminal (CVE-2017-5226)", "ioctl"),
    _group(
        "personality",
        "only PER_LINUX, PER_LINUX32, UNAME26 and the query (as Docker); not ADDR_NO_RANDOMIZE",
        "personality",
    ),
    _group(
        "socket",
        "AF_UNIX; AF_INET and AF_INET6 as TCP or UDP; AF_NETLINK for NETLINK_ROUTE (getifaddrs). Not AF_PACKET, "
        "AF_ALG, AF_VSOCK, raw sockets or protocols that load kernel modules (SCTP, DCCP): kernel attack surface",
        "socket",
    ),
    _group("socketpair", "AF_UNIX only (the only family the kernel pairs)", "socketpair"),
)

#: ENOSYS, so that glibc falls back to clone(2) and programs to openat(2), whose flags and
#: mode a filter can read (clone3's flags and openat2's mode sit in memory, out of its reach).
NOT_IMPLEMENTED = _group(
    "not implemented",
    "their arguments are in memory, where a filter cannot check them (clone3's namespace flags, openat2's "
    "set-id mode bits); glibc then falls back to clone, and callers of openat2 to openat, whose arguments the filter "
    "checks",
    "clone3 openat2",
)

REFUSED = (
    _group(
        "mounts",
        "the mount table is built by nsbox and locked; the new mount API is refused with the old "
        "(Flatpak missed it: CVE-2021-41133)",
        "mount umount2 pivot_root chroot fsopen fsconfig fsmount fspick move_mount open_tree mount_setattr",
    ),
    _group("namespaces", "no new namespace, and no way into another one", "unshare setns"),
    _group(
        "other processes",
        "reading or steering another process's memory, files or descriptors",
        "ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd process_madvise process_mrelease",
    ),
    _group(
        "kernel attack surface",
        "subsystems with a long record of local privilege escalations, which programs seldom need",
        "bpf perf_event_open userfaultfd io_uring_setup io_uring_enter io_uring_register",
    ),
    _group(
        "keyrings",
        "kernel keyrings are not namespaced: keys could outlive or leave the sandbox",
        "keyctl add_key request_key",
    ),
    _group(
        "kernel and modules",
        "replacing the kernel or loading code into it",
        "kexec_load kexec_file_load init_module finit_module delete_module",
    ),
    _group(
        "file handles",
        "open_by_handle_at opens any file of a mount, bypassing paths (the 'shocker' escape)",
        "open_by_handle_at name_to_handle_at",
    ),
    _group(
        "host administration",
        "state of the whole machine: accounting, swap, power, clocks, the kernel log, quotas",
        "acct swapon swapoff reboot settimeofday clock_settime clock_adjtime adjtimex syslog quotactl quotactl_fd",
    ),
    _group(
        "obsolete",
        "old or hardware-level calls no modern program needs, each a past source of bugs",
        "modify_ldt iopl ioperm uselib ustat sysfs _sysctl lookup_dcookie remap_file_pages vhangup "
        "create_module get_kernel_syms query_module nfsservctl",
    ),
)


def allowed_names() -> set[str]:
    """Every syscall the default policy lets reach the kernel (some with arguments only)."""
    return {name for group in (*ALLOWED, *CONDITIONAL) for name in group.syscalls}


def refused_names() -> set[str]:
    return {name for group in REFUSED for name in group.syscalls}
