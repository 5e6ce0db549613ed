"""nsbox as an ordinary user: what differs from root, and what must not.

These run in the rootless passes of scripts/rootless-test.sh (NSBOX_TEST_ROOTLESS=1), as
an uid it created: first in a cgroup subtree delegated to that user
(NSBOX_TEST_CGROUP=delegated), then in the cgroup it started in, not delegated
(NSBOX_TEST_CGROUP=undelegated). The rest of the suite runs in the first pass too; this
file adds what only a rootless run can show. Where the host has a subordinate id range
for the user (/etc/subuid, newuidmap) payloads get a uid of it; otherwise ("own" mode,
the cgroup v2 VM, whose /etc is read-only) they share the user's, as documented.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import nsbox
from nsbox._cgroup import cgroup_layout
from nsbox._userns import mapping_for_host, subordinate_ranges
from tests.conftest import NSBOX_CLI, OWN_IDS, ROOTLESS_RUN, probe_argv, wait_until
from tests.integration._session_api import _uids, processes_with_argv

CGROUP = os.environ.get("NSBOX_TEST_CGROUP", "")
pytestmark = pytest.mark.skipif(
    not ROOTLESS_RUN or os.geteuid() == 0, reason="runs in the rootless passes of scripts/rootless-test.sh"
)
delegated = pytest.mark.skipif(CGROUP != "delegated", reason="the delegated pass's")
undelegated = pytest.mark.skipif(CGROUP != "undelegated", reason="the undelegated pass's")

FENCES = """
status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\\t" in l)
out["ids"] = [os.getuid(), os.getgid(), os.getgroups()]
out["cap_eff"] = status["CapEff"].strip()
out["cap_bnd"] = status["CapBnd"].strip()
out["no_new_privs"] = status["NoNewPrivs"].strip()
out["seccomp"] = status["Seccomp"].strip()
out["root_write"] = attempt(lambda: open("/nsbox-probe", "w"))
out["usr_write"] = attempt(lambda: open("/usr/nsbox-probe", "w"))
out["workspace_write"] = attempt(lambda: open("/workspace/probe", "w").write("x"))
out["mounts"] = {l.split()[1]: l.split()[2] for l in open("/proc/self/mounts")}
out["userns"] = attempt(lambda: os.unshare(os.CLONE_NEWUSER) if hasattr(os, "unshare") else
                        (libc.unshare(0x10000000) == 0 or (_ for _ in ()).throw(OSError(ctypes.get_errno(), ""))))
out["kill_init"] = attempt(lambda: os.kill(1, 15))
out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
"""


@pytest.fixture(scope="module")
def mapping() -> nsbox._userns.IdMapping:  # type: ignore[name-defined]
    return mapping_for_host()


def test_the_full_isolation_holds_for_an_ordinary_user(mapping: object) -> None:
    with nsbox.NsSandbox(cgroups=CGROUP == "delegated") as sandbox:
        result = sandbox.run(probe_argv(FENCES), capture_output=True)
    assert result.status is nsbox.Status.OK, result
    out = json.loads(result.stdout)
    uid, gid, groups = out["ids"]
    assert (uid, gid) == (1000, 1000)
    # Own mode: the user's supplementary groups stay (setgroups is "deny"): their own group,
    # which is the payload's gid, and others unmapped (the overflow gid). Else none.
    assert set(groups) <= {1000, 65534} if OWN_IDS else groups == [], groups
    assert out["cap_eff"] == "0000000000000000" and out["cap_bnd"] == "0000000000000000"
    assert out["no_new_privs"] == "1" and out["seccomp"] == "2"
    assert out["root_write"] in ("EROFS", "EACCES") and out["usr_write"] in ("EROFS", "EACCES")
    assert out["workspace_write"] == "ok" and out["mounts"]["/workspace"] == "tmpfs"
    assert out["userns"] in ("EPERM", "ENOSPC")
    assert max(out["pids"]) < 10, "only the sandbox's own processes are visible"


def test_payloads_get_a_uid_of_the_subordinate_range_where_the_host_has_one(mapping: nsbox._userns.IdMapping) -> None:  # type: ignore[name-defined]
    """On the host (useradd gave the test user a range): the payload is neither us nor
    init, so it can signal neither. In the VM (no /etc/subuid entry): own mode, said so."""
    with nsbox.NsSandbox(cgroups=CGROUP == "delegated") as sandbox:
        sandbox.run(["sh", "-c", f"{' '.join(SLEEP)} >/dev/null 2>&1 &"])
        assert wait_until(lambda: _host_uids_of(SLEEP) != [], 10), "the sleep should be visible from the host"
        host_uids = _host_uids_of(SLEEP)
        kill = sandbox.run(probe_argv('out["kill_init"] = attempt(lambda: os.kill(1, 15))'), capture_output=True)
    if mapping.mode == "subordinate":
        first = int(mapping.outer_uid_map.splitlines()[1].split()[1])
        assert host_uids == [first + 999], (host_uids, mapping)
        assert json.loads(kill.stdout)["kill_init"] == "EPERM"
    else:
        assert mapping.mode == "own" and subordinate_ranges() is None
        assert host_uids == [os.getuid()]


def test_with_a_writable_bind_the_payload_is_the_caller_and_still_not_init(
    mapping: nsbox._userns.IdMapping,  # type: ignore[name-defined]
    host_tmp: Callable[..., Path],
) -> None:
    """Subordinate mode's keep-id (issue 25): a sandbox with a writable bind runs its payload
    as the caller, so that what it writes there is the caller's; init stays a subordinate id
    the payload cannot signal, and the file API still acts as the payload. Own mode: the
    payload is the caller anyway."""
    out = host_tmp("keep-id", 0o755)
    mounts = (nsbox.Mount(str(out), "/workspace/out", writable=True),)
    with nsbox.NsSandbox(mounts=mounts, cgroups=CGROUP == "delegated") as sandbox:
        sandbox.run(["sh", "-c", f"{' '.join(SLEEP)} >/dev/null 2>&1 &"])
        assert wait_until(lambda: _host_uids_of(SLEEP) != [], 10), "the sleep should be visible from the host"
        host_uids = _host_uids_of(SLEEP)
        kill = sandbox.run(probe_argv('out["kill_init"] = attempt(lambda: os.kill(1, 15))'), capture_output=True)
        sandbox.write_file("from-api", b"api")
        sh = "echo s > secret && chmod 000 secret && echo r > kept && chmod 400 kept && mkdir shut && chmod 500 shut"
        assert sandbox.run(["sh", "-c", sh]).ok
        # The API acts with the payload's rights and no more (its uid in A is the payload's
        # own there, so nothing but dropped capabilities stops an override).
        with pytest.raises(PermissionError):
            sandbox.read_file("secret")
        with pytest.raises(PermissionError):
            sandbox.write_file("kept", b"overwritten")
        with pytest.raises(PermissionError):
            sandbox.write_file("shut/new", b"x")
        made = sandbox.run(
            ["sh", "-c", "cp from-api out/ && stat -c '%u %g' from-api out/from-api"], capture_output=True
        )
    assert host_uids == [os.getuid()], (host_uids, mapping)
    assert made.stdout == b"1000 1000\n1000 1000\n", made
    st = (out / "from-api").stat()
    assert (st.st_uid, st.st_gid, (out / "from-api").read_bytes()) == (os.getuid(), os.getgid(), b"api")
    if mapping.mode == "subordinate":
        assert json.loads(kill.stdout)["kill_init"] == "EPERM", "init is a subordinate id: not the payload's to signal"


SLEEP = ("sleep", "31.25")


def _host_uids_of(argv: tuple[str, ...]) -> list[int]:
    """The real uids, as the host sees them, of the processes running exactly ``argv``."""
    return [uids[0] for uids in map(_uids, processes_with_argv(*argv)) if uids]


def test_the_file_api_acts_as_the_payload(mapping: object) -> None:
    """The supervisor writes and reads the workspace as the payload's uid (in subordinate
    mode it joined the sandbox's outer user namespace for that), and can do no more: a
    file the payload made unreadable stays unreadable."""
    with nsbox.NsSandbox(cgroups=CGROUP == "delegated") as sandbox:
        sandbox.write_file("from-api.txt", b"hello")
        result = sandbox.run(
            [
                "sh",
                "-c",
                "stat -c '%u %g %s' from-api.txt; echo back > from-run.txt; echo s > secret; chmod 000 secret",
            ],
            capture_output=True,
        )
        assert result.stdout == b"1000 1000 5\n", result
        assert sandbox.read_file("from-run.txt") == b"back\n"
        with pytest.raises(PermissionError):
            sandbox.read_file("secret")


def test_the_egress_proxy_serves_a_rootless_sandbox_and_refuses_what_is_not_listed() -> None:
    """The proxy's listener is made in the sandbox's network namespace, entered through its
    user namespace (an ordinary user holds CAP_SYS_ADMIN only there). The request names a
    host that is not listed: the proxy answers 403 itself, so nothing leaves this machine
    (the allowed-host path is tested as root, with network hosts the tests build)."""
    code = (
        "import urllib.request, urllib.error\n"
        "try:\n    urllib.request.urlopen('http://unlisted.invalid/', timeout=20)\n"
        "except urllib.error.HTTPError as e:\n    print(e.code)\n"
    )
    policy = nsbox.NetworkPolicy(mode="allow", allowed_hosts=("example.invalid",))
    with nsbox.NsSandbox(network=policy, cgroups=CGROUP == "delegated") as sandbox:
        result = sandbox.run(["python3", "-c", code], capture_output=True, timeout=60)
    assert result.stdout == b"403\n", result


@delegated
def test_the_sandbox_cgroups_lie_below_our_delegated_cgroup() -> None:
    layout = cgroup_layout()
    with nsbox.NsSandbox(memory="96M", pids=32) as sandbox:
        report = sandbox.run(["true"]).to_dict()
        own_dirs = {p.own_dir.rstrip("/") for p in layout.values()}
        made = [
            os.path.join(own, "nsbox", name)
            for own in own_dirs
            if os.path.isdir(os.path.join(own, "nsbox"))
            for name in os.listdir(os.path.join(own, "nsbox"))
        ]
        assert made, own_dirs
        assert all(os.stat(d).st_uid == os.getuid() for d in made)
        if any(p.version == "v2" for p in layout.values()):
            # Our delegated v2 cgroup held us (pytest): nsbox moved us one level down, into
            # nsbox-caller, to enable the controllers there; and counts the one above as ours.
            v2_path = next(
                line for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::")
            )
            assert v2_path.endswith("/nsbox-caller"), v2_path
    assert report["limits"].startswith("cgroup"), report


@delegated
def test_memory_and_pids_limits_are_real_for_an_ordinary_user() -> None:
    with nsbox.NsSandbox(memory="64M", pids=16, timeout=60) as sandbox:
        oom = sandbox.run(["python3", "-c", "b = bytearray(256 << 20); b[::4096] = b'x' * len(b[::4096])"])
        forks = sandbox.run(
            [
                "python3",
                "-c",
                probe_argv("")[2] + "\nimport time\nfor i in range(64):\n"
                "    try:\n        os.fork() or (time.sleep(5), os._exit(0))\n    except OSError as e:\n"
                "        print('refused', i); break",
            ],
            capture_output=True,
        )
    assert oom.status is nsbox.Status.OOM, oom
    assert b"refused" in forks.stdout, forks
    assert forks.status in (nsbox.Status.PIDS, nsbox.Status.OK), forks


@undelegated
def test_without_delegation_nsbox_refuses_and_names_the_remedy() -> None:
    proc = subprocess.run([NSBOX_CLI, "exec", "--", "true"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 125, proc
    assert "not delegated" in proc.stderr and "Delegate=yes" in proc.stderr and "--no-cgroups" in proc.stderr
    with pytest.raises(nsbox.SetupError) as refused:
        nsbox.NsSandbox().start()
    assert "systemd-run --user --scope" in refused.value.remedy
    check = subprocess.run([NSBOX_CLI, "check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and "FAIL  cgroup memory" in check.stdout and "Delegate=yes" in check.stdout


@undelegated
def test_with_no_cgroups_the_report_says_rlimit_only(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [
            NSBOX_CLI,
            "exec",
            "--no-cgroups",
            "--memory",
            "64M",
            "--report",
            str(report),
            "--",
            "python3",
            "-c",
            "bytearray(256 << 20)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    data = json.loads(report.read_text())
    assert data["limits"] == "rlimit-only", data
    assert proc.returncode == 1 and "MemoryError" in proc.stderr, proc
