"""Writable binds (issue 25): inside, the bind is the sandbox's own; on the host, what the
sandbox writes is the caller's (or, as root, ``--bind-owner``'s), and the sandbox can write
where the caller can. As root a writable bind is an idmapped mount; as an ordinary user the
payload runs as the caller (subordinate mode's keep-id, or own mode's one id). Attacked, as
root and rootless: set-id bits written inside must never reach the host (the files are the
caller's there), a symlink the sandbox plants in the bind must not steer a host-side write,
and a read-only bind stays read-only."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import nsbox
from nsbox import Mount
from tests.conftest import NSBOX_CLI, require_root, require_sandbox

#: Every way the payload could give a file a set-id bit, and what each answered.
SET_ID_ATTEMPTS = r"""
import ctypes, errno, json, os
out = {}
def attempt(name, call):
    try:
        call()
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode[exc.errno]
base = "/workspace/out"
open(f"{base}/plain", "w").write("x")
attempt("chmod 0755", lambda: os.chmod(f"{base}/plain", 0o755))
attempt("chmod 4755", lambda: os.chmod(f"{base}/plain", 0o4755))
attempt("chmod 2755", lambda: os.chmod(f"{base}/plain", 0o2755))
fd = os.open(f"{base}/plain", os.O_RDONLY)
attempt("fchmod 6755", lambda: os.fchmod(fd, 0o6755))
attempt("open 4755", lambda: os.close(os.open(f"{base}/created", os.O_CREAT | os.O_WRONLY, 0o4755)))
attempt("mkdir 2775", lambda: os.mkdir(f"{base}/dir", 0o2775))
attempt("mknod 4755", lambda: os.mknod(f"{base}/node", 0o100000 | 0o4755))
libc = ctypes.CDLL(None, use_errno=True)
class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]
how = OpenHow(os.O_CREAT | os.O_WRONLY, 0o4755, 0)
r = libc.syscall(437, -100, f"{base}/via-openat2".encode(), ctypes.byref(how), ctypes.sizeof(how))
out["openat2 4755"] = "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
print(json.dumps(out))
"""


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.lstat().st_mode for p in folder.rglob("*")}


def test_what_the_sandbox_writes_is_the_callers_and_the_callers_0755_folder_is_writable(
    host_tmp: Callable[..., Path],
) -> None:
    require_sandbox()
    out = host_tmp("out", 0o755)  # the caller's (root's as root), 0755: no other uid can write it
    (out / "old").write_text("the caller's file\n")
    os.chmod(out / "old", 0o644)
    script = "echo new > out/new && mkdir out/sub && echo more >> out/old && stat -c '%u %g %n' out out/new out/old"
    with nsbox.NsSandbox(mounts=(Mount(str(out), "/workspace/out", writable=True),)) as sandbox:
        result = sandbox.run(["sh", "-c", script], capture_output=True)
    assert result.ok, result
    inside = {line.split()[2]: line.split()[:2] for line in result.stdout.decode().splitlines()}
    assert inside == {"out": ["1000", "1000"], "out/new": ["1000", "1000"], "out/old": ["1000", "1000"]}, (
        "inside, the bind and the caller's files are the sandbox user's own"
    )
    for name in ("new", "sub", "old"):
        st = (out / name).stat()
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), (name, st.st_uid, st.st_gid)
    assert (out / "old").read_text() == "the caller's file\nmore\n"


def test_bind_owner_names_who_owns_the_files_and_others_files_stay_theirs(host_tmp: Callable[..., Path]) -> None:
    require_root("idmapped binds are root's")
    out = host_tmp("owned", 0o755)
    os.chown(out, 1234, 2345)
    (out / "roots").write_text("root's\n")
    os.chmod(out / "roots", 0o644)
    argv = [NSBOX_CLI, "exec", "--bind", f"{out}:/workspace/out", "--bind-owner", "1234:2345", "--"]
    script = "echo made > out/made; stat -c '%u' out/roots; echo overwritten > out/roots || echo refused"
    done = subprocess.run([*argv, "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "65534", "a file of an id outside the mapping is nobody's inside"
    assert done.stdout.split()[-1] == "refused" and (out / "roots").read_text() == "root's\n"
    st = (out / "made").stat()
    assert (st.st_uid, st.st_gid) == (1234, 2345)
    bad = subprocess.run([*argv[:4], "--bind-owner", "me", "--", "true"], capture_output=True, text=True)
    assert bad.returncode == 125 and "--bind-owner" in bad.stderr, bad.stderr


def test_set_id_bits_written_inside_never_reach_the_host(host_tmp: Callable[..., Path]) -> None:
    require_sandbox()
    out = host_tmp("setid", 0o755)
    with nsbox.NsSandbox(mounts=(Mount(str(out), "/workspace/out", writable=True),)) as sandbox:
        result = sandbox.run(["python3", "-c", SET_ID_ATTEMPTS], capture_output=True)
    answers = json.loads(result.stdout)
    assert answers.pop("chmod 0755") == "ok", "the premise: modes without set-id bits are taken"
    assert answers.pop("openat2 4755") == "ENOSYS", "its mode is out of a filter's reach: not implemented"
    assert set(answers.values()) == {"EPERM"}, answers
    found = {name: oct(mode) for name, mode in _modes(out).items() if mode & (stat.S_ISUID | stat.S_ISGID)}
    assert found == {}, f"set-id files on the host: {found}"
    assert (out / "plain").stat().st_uid == os.getuid(), "the files are the caller's: why the bits must never land"


def test_premise_without_the_filter_a_set_id_bit_would_land_as_the_callers(host_tmp: Callable[..., Path]) -> None:
    """The same attempts with no syscall filter (seccomp unconfined): the kernel takes them,
    and the host gets a set-uid file of the caller's. The filter above is what stops it."""
    require_sandbox()
    out = host_tmp("setid-premise", 0o700)  # only the caller can reach what is made here, while it exists
    inner = out / "out"
    inner.mkdir(mode=0o755)
    spec = nsbox.SandboxSpec(mounts=(Mount(str(inner), "/workspace/out", writable=True),), seccomp="unconfined")
    with nsbox.NsSandbox(spec) as sandbox:
        result = sandbox.run(["python3", "-c", SET_ID_ATTEMPTS], capture_output=True)
    answers = json.loads(result.stdout)
    assert answers["chmod 4755"] == "ok", answers
    mode = (inner / "created").stat().st_mode
    assert mode & stat.S_ISUID and (inner / "created").stat().st_uid == os.getuid(), oct(mode)
    for path in inner.rglob("*"):  # not left set-id a moment longer than needed
        if path.is_file() and not path.is_symlink():
            path.chmod(0o600)


def test_a_symlink_planted_in_a_bind_does_not_steer_a_host_side_write(host_tmp: Callable[..., Path]) -> None:
    require_sandbox()
    out = host_tmp("planted", 0o755)
    victim = host_tmp("victim", 0o700) / "precious"
    victim.write_text("untouched\n")
    argv = [NSBOX_CLI, "exec", "--bind", f"{out}:/workspace/out", "--report", str(out / "report.json"), "--"]
    done = subprocess.run([*argv, "ln", "-s", str(victim), "/workspace/out/report.json"], capture_output=True)
    assert (out / "report.json").is_symlink(), "the premise: the sandbox planted it"
    assert done.returncode == 125 and b"--report" in done.stderr, done.stderr
    assert victim.read_text() == "untouched\n"


def test_a_read_only_bind_stays_read_only(host_tmp: Callable[..., Path]) -> None:
    require_sandbox()
    data = host_tmp("data", 0o755)
    (data / "a").write_text("a\n")
    os.chmod(data / "a", 0o666)  # writable by anyone: only the mount can refuse
    argv = [NSBOX_CLI, "exec", "--ro-bind", f"{data}:/data", "--", "sh", "-c"]
    script = "echo x >> /data/a; echo $?; touch /data/b; echo $?; chmod 600 /data/a; echo $?"
    done = subprocess.run([*argv, script], capture_output=True, text=True, timeout=60)
    statuses = done.stdout.split()
    assert len(statuses) == 3 and "0" not in statuses, (done.stdout, done.stderr)
    assert done.stderr.count("Read-only file system") == 3, done.stderr
    assert (data / "a").read_text() == "a\n" and not (data / "b").exists()


def test_as_an_ordinary_user_bind_owner_is_refused(host_tmp: Callable[..., Path]) -> None:
    """Idmapped mounts need root over the host's filesystem: an ordinary user's writable binds
    are plain binds, written as the caller, and naming another owner is refused rather than
    silently ignored."""
    if os.geteuid() == 0:
        pytest.skip("an ordinary user's behaviour: the rootless passes run it")
    require_sandbox()
    out = host_tmp("plain", 0o755)
    spec = nsbox.SandboxSpec(mounts=(Mount(str(out), "/workspace/out", writable=True),), bind_owner="0:0")
    with pytest.raises(nsbox.SpecError, match=r"bind_owner \(--bind-owner\): needs root"):
        nsbox.NsSandbox(spec).start()
