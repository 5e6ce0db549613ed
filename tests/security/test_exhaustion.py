"""Resource exhaustion from inside, kept light (the fork bomb and the big allocation are
in tests/integration/test_limits.py): filling the writable filesystems, writing a file
beyond the size limit, and allocating through a memfd, whose pages are shared memory
(charged to the sandbox's cgroup, not to any process's RLIMIT_AS).
"""

from __future__ import annotations

from tests.conftest import SandboxRun, probe_argv
from tests.security._attack import reported

FILL = """
def fill(path, limit):
    chunk, written = b"x" * (1 << 20), 0
    try:
        with open(path, "wb", buffering=0) as f:
            while written < limit:
                written += f.write(chunk)
        return "ok"
    except OSError as e:
        return [errno.errorcode[e.errno], written >> 20]
    finally:
        os.unlink(path)
"""


def test_filling_the_workspace_and_tmp_ends_in_enospc(api_run: SandboxRun) -> None:
    probe = probe_argv(
        FILL + 'out["workspace"] = fill("/workspace/fill", 64 << 20)\nout["tmp"] = fill("/tmp/fill", 64 << 20)'
    )
    out = reported(api_run(probe, workspace_size="8M"))
    for where in ("workspace", "tmp"):
        err, mib = out[where]
        assert err == "ENOSPC" and mib <= 8, out


def test_filling_dev_shm_ends_in_enospc(api_run: SandboxRun) -> None:
    """/dev/shm is a tmpfs of its own: bounded too, below the memory limit."""
    out = reported(api_run(probe_argv(FILL + 'out["shm"] = fill("/dev/shm/fill", 1 << 30)')))
    err, mib = out["shm"]
    assert err == "ENOSPC" and mib < 512, out


def test_a_file_beyond_the_size_limit_is_refused(sandbox_run: SandboxRun) -> None:
    """RLIMIT_FSIZE: Python ignores SIGXFSZ, so the write past the limit fails with EFBIG;
    a program that does not ignore it (head) is killed by SIGXFSZ."""
    code = FILL + 'out["python"] = fill("/workspace/big", 8 << 20)'
    out = reported(sandbox_run(probe_argv(code), file_size="1M"))
    assert out["python"] == ["EFBIG", 1], out
    shell = sandbox_run(["sh", "-c", "head -c 4M /dev/zero > /workspace/big; echo $?"], file_size="1M")
    assert shell.stdout == b"153\n", shell  # 128 + SIGXFSZ (25)


def test_a_memfd_allocation_hits_the_memory_limit(sandbox_run: SandboxRun) -> None:
    """memfd pages belong to no mapping the payload counts: only the cgroup stops them."""
    code = """
fd = os.memfd_create("hog")
chunk = b"x" * (1 << 20)
for _ in range(512):
    os.write(fd, chunk)
out["written"] = "all"
"""
    out = sandbox_run(probe_argv(code), memory="64M")
    assert out.status == "oom", out
