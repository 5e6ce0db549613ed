"""Shared fixtures: one test body runs against both front-ends (the API and the CLI).

``sandbox_run(argv, **options)`` returns an Outcome, whichever way it ran. Options use
the API's names; the CLI runner turns them into flags. Tests that make sandboxes call
``require_sandbox()``; those that need root for a reason of their own call
``require_root(reason)``. Under NSBOX_TEST_STRICT=1 (make test, CI) a missing requirement
fails instead of skipping, except ``require_root`` in the rootless run, which says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import nsbox
from nsbox import SecurityError
from nsbox._userns import HOST_ID_BASE, ID_RANGE, RANGE_SLOTS, mapping_for_host

NSBOX_CLI = str(Path(sys.executable).with_name("nsbox"))
STRICT = os.environ.get("NSBOX_TEST_STRICT") == "1"


@contextlib.contextmanager
def _variable_set_to_a_new_folder(variable: str, prefix: str) -> Iterator[None]:
    """``variable`` names a fresh folder while in the block; both are as before after it."""
    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        previous = os.environ.get(variable)
        os.environ[variable] = directory
        yield
        if previous is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = previous


@pytest.fixture(scope="session", autouse=True)
def _cache_of_this_run() -> Iterator[None]:
    """nsbox's cache (compiled seccomp filters) in a directory of this test run, removed at
    the end, instead of the user's ~/.cache (the CLIs the tests start inherit it)."""
    with _variable_set_to_a_new_folder("XDG_CACHE_HOME", "nsbox-test-cache-"):
        yield


@pytest.fixture(scope="session", autouse=True)
def _data_of_this_run() -> Iterator[None]:
    """nsbox's data directory (built and imported roots) in a directory of this test run,
    removed at the end: no test reads or writes /var/lib/nsbox or ~/.local/share/nsbox."""
    with _variable_set_to_a_new_folder("NSBOX_DATA_DIR", "nsbox-test-data-"):
        yield


ROOTLESS_RUN = os.environ.get("NSBOX_TEST_ROOTLESS") == "1"
#: Rootless without a subordinate id range ("own" mode, README): payloads share init's
#: uid, the user's. The tests that see the difference expect what the README documents.
OWN_IDS = os.geteuid() != 0 and mapping_for_host().mode == "own"


def require_sandbox() -> None:
    """Sandboxes can be made here: as root, or in the rootless run of scripts/rootless-test.sh
    (an ordinary user with a delegated cgroup subtree)."""
    if os.geteuid() != 0 and not ROOTLESS_RUN:
        reason = "needs root, or the rootless run (scripts/rootless-test.sh: a user with delegated cgroups)"
        if STRICT:
            pytest.fail(f"strict mode: {reason}")
        pytest.skip(reason)


def require_run_code() -> None:
    """run_code gives its programs a uid of their own, which a sandbox that maps a single id
    does not have: own mode refuses it, and ``test_own_mode_refuses_run_code`` checks that.
    Every other run_code test skips there, saying so."""
    require_sandbox()
    if OWN_IDS:
        pytest.skip("own mode refuses run_code (test_own_mode_refuses_run_code)")


def require_root(reason: str) -> None:
    """A test that needs root for a reason of its own (``reason``, e.g. it builds network
    hosts with veth pairs). The rootless run skips it, saying why; elsewhere, strict mode
    fails without root."""
    if os.geteuid() == 0:
        return
    if ROOTLESS_RUN:
        pytest.skip(f"needs root: {reason}")
    if STRICT:
        pytest.fail(f"strict mode: needs root: {reason}")
    pytest.skip(f"needs root: {reason}")


@dataclass
class Outcome:
    status: str
    exit_code: int
    stdout: bytes
    stderr: bytes
    error: str | None
    wall_s: float
    elapsed_s: float
    report: dict[str, Any]

    def json(self) -> Any:
        return json.loads(self.stdout)


def _api_run(argv: list[str], input: bytes | None = None, **options: Any) -> Outcome:
    mounts = [nsbox.Mount.parse(m) for m in options.pop("ro_bind", [])]
    mounts += [nsbox.Mount.parse(m, writable=True) for m in options.pop("bind", [])]
    env = options.pop("env", {})
    cwd = options.pop("cwd", "/workspace")
    if options.pop("no_cgroups", False):
        options["cgroups"] = False
    started = time.monotonic()
    with nsbox.NsSandbox(mounts=tuple(mounts), env=env, **options) as sandbox:
        result = sandbox.run(argv, capture_output=True, input=input, cwd=cwd)
    elapsed = time.monotonic() - started
    return Outcome(
        result.status.value,
        result.exit_code,
        result.stdout or b"",
        result.stderr or b"",
        result.error,
        result.wall_s,
        elapsed,
        result.to_dict(),
    )


def _cli_run(argv: list[str], input: bytes | None = None, **options: Any) -> Outcome:
    flags: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if key == "env":
            flags += [a for k, v in value.items() for a in ("--env", f"{k}={v}")]
        elif value is True:
            flags.append(flag)
        elif isinstance(value, list):
            flags += [a for v in value for a in (flag, v)]
        else:
            flags += [flag, str(value)]
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        started = time.monotonic()
        proc = subprocess.run(
            [NSBOX_CLI, "exec", *flags, "--report", report.name, "--", *argv],
            input=input or b"",
            capture_output=True,
            timeout=120,
        )
        elapsed = time.monotonic() - started
        data = json.loads(Path(report.name).read_text() or "{}")
    assert proc.returncode == data.get("exit_code"), (proc.returncode, data, proc.stderr)
    return Outcome(
        data["status"],
        proc.returncode,
        proc.stdout,
        proc.stderr,
        data.get("error"),
        data.get("wall_s", 0.0),
        elapsed,
        data,
    )


SandboxRun = Callable[..., Outcome]


@pytest.fixture(params=["api", "cli"])
def sandbox_run(request: pytest.FixtureRequest) -> SandboxRun:
    require_sandbox()
    return _api_run if request.param == "api" else _cli_run


@pytest.fixture
def api_run() -> SandboxRun:
    require_sandbox()
    return _api_run


PROBE_PRELUDE = """
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
out = {}
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
"""


def probe_argv(code: str) -> list[str]:
    """A python3 program run inside the sandbox: ``code`` fills ``out``, printed as JSON."""
    return ["python3", "-c", PROBE_PRELUDE + code + "\nprint(json.dumps(out))"]


def sandbox_processes() -> list[int]:
    """Host pids of sandbox processes: as root, those whose uid lies in the sandbox id
    range; rootless (where sandboxes run as us or our subordinate range), those in a pid
    namespace below ours, and the intermediate above each such init."""
    rootless = os.geteuid() != 0
    own_depth = _pid_depth(_status("self") or "")
    pids, parents = [], set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        status = _status(entry)
        if status is None:
            continue
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        if any(HOST_ID_BASE <= int(uid) < HOST_ID_BASE + RANGE_SLOTS * ID_RANGE for uid in uids):
            pids.append(int(entry))
        elif rootless and _pid_depth(status) > own_depth:
            pids.append(int(entry))
            if "\nName:\tnsbox-init\n" in "\n" + status:
                parents.add(int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:"))))
    return sorted(set(pids) | parents)


def _status(pid: str) -> str | None:
    try:  # not the owner of /proc/PID: that is root for non-dumpable processes
        return Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _pid_depth(status: str) -> int:
    return next((len(line.split()) - 1 for line in status.splitlines() if line.startswith("NSpid:")), 1)


def guard_processes() -> list[int]:
    """Host pids of cgroup guards (the helper of ``nsbox exec`` that outlives a killed CLI)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                if Path(f"/proc/{entry}/cmdline").read_bytes().startswith(b"nsbox-cgroup-guard"):
                    pids.append(int(entry))
    return pids


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Asserts after the test that nothing of any sandbox is left on the host."""
    before_mounts = Path("/proc/self/mountinfo").read_text()
    before_tmp = _tmp_entries()
    yield
    assert wait_until(lambda: not sandbox_processes()), f"sandbox processes left: {sandbox_processes()}"
    assert wait_until(lambda: not guard_processes()), f"cgroup guards left: {guard_processes()}"
    assert Path("/proc/self/mountinfo").read_text() == before_mounts
    assert _tmp_entries() - before_tmp == set()


def _tmp_entries() -> set[str]:
    return {e for e in os.listdir("/tmp") if not e.startswith(("pytest-of-", "tmp"))}


# --- host-side attacks: folders, sessions, calls that might block ------------------------------
@pytest.fixture
def host_tmp() -> Iterator[Callable[..., Path]]:
    """Makes host temporary directories (named tmp*, as the leftover check expects), by their
    real path (no symlink in them), removed after the test whatever a sandbox left in them."""
    made: list[Path] = []

    def make(name: str, mode: int = 0o700) -> Path:
        path = Path(os.path.realpath(tempfile.mkdtemp(prefix=f"tmp-nsbox-{name}-")))
        made.append(path)
        os.chmod(path, mode)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def session(**options: Any) -> Iterator[nsbox.NsSandbox]:
    require_sandbox()
    with nsbox.NsSandbox(**options) as sandbox:
        yield sandbox


def sh(sandbox: nsbox.NsSandbox, script: str, timeout: float = 30) -> bytes:
    """Runs a shell script in /workspace; it must succeed. Returns its stdout."""
    result = sandbox.run(["sh", "-c", script], capture_output=True, timeout=timeout)
    assert result.status == nsbox.Status.OK, (script, result.status, result.exit_code, result.error, result.stderr)
    return result.stdout or b""


def call_within(call: Callable[[], Any], seconds: float) -> tuple[threading.Thread, Any, BaseException | None]:
    """Runs ``call`` in a daemon thread for up to ``seconds``: (the thread, its value, its
    exception). The thread is still alive if the call blocked: the caller unblocks it."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread, box.get("value"), box.get("error")


def fingerprint(path: Path) -> tuple[Any, ...] | None:
    """Everything a write (or a replacement) through an escape would change; None: no such
    entry. (atime is left out: a read through an escape is seen in the data, not here.)"""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        content: Any = sorted(os.listdir(path))
    elif stat.S_ISREG(st.st_mode):
        content = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        content = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    return (content, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid, st.st_gid, st.st_size)


def expect_refusal(
    failures: list[str],
    label: str,
    call: Callable[[], Any],
    refusal: type[BaseException] | tuple[type[BaseException], ...] = SecurityError,
) -> None:
    """Records (rather than stops at) a call that was not refused with ``refusal``."""
    try:
        value = call()
    except refusal:
        return
    except Exception as exc:
        failures.append(f"{label}: raised {type(exc).__name__}: {exc}")
        return
    failures.append(f"{label}: succeeded, returned {value!r:.120}")


@contextlib.contextmanager
def restoring(path: Path) -> Iterator[None]:
    """A host file a broken implementation could overwrite: put back as it was, whatever happens."""
    data, st = path.read_bytes(), os.stat(path)
    try:
        yield
    finally:
        now = os.stat(path)
        if path.read_bytes() != data:
            path.write_bytes(data)
        if (now.st_mode, now.st_uid, now.st_gid) != (st.st_mode, st.st_uid, st.st_gid):
            os.chown(path, st.st_uid, st.st_gid)
            os.chmod(path, stat.S_IMODE(st.st_mode))
