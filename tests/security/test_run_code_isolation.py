"""run_code's programs, attacked from inside (issue 19): no program can leave anything for
the next, or touch the warm interpreter that forks them.

- traces: a program leaves everything it can (a double-forked daemon holding an abstract
  socket, files in /tmp, its directory and /dev/shm, System V shared memory, semaphores
  and message queues, a POSIX message queue, patched builtins and sys.modules, an ignored
  SIGTERM, a lower RLIMIT_NOFILE, another cwd and environment); the next program looks for
  each. The premise: the leaver sees each one in place, with the same probe;
- tampering: a program tries to trace, read the memory of, kill and stop the warm
  interpreter (its parent); each fails, and the next program is forked by the same one;
- limits: a fork bomb, an endless loop, an allocation past the memory limit, 100 MB of
  output and a program that closes its stdout each get their verdict, and the next
  program runs normally.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from typing import Any

import pytest

import nsbox
from nsbox import Status
from tests.conftest import require_run_code

#: Looks for every trace LEAVE leaves; prints what it found as a Python literal (the json
#: module is one of the things the leaver breaks). ``old_dir`` is the
#: leaver's working directory (set before it).
PROBE = r"""
import builtins, os, resource, signal, socket, sys
found = {}
others = []
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            continue
        uid = int(status.split("Uid:")[1].split()[0])
        state = status.split("State:")[1].split()[0]
        if uid == os.getuid() and state != "Z":
            others.append(int(pid))
found["processes of my uid"] = others
found["files"] = [p for p in ("/tmp/left", old_dir + "/left", old_dir, "/dev/shm/left", "/dev/mqueue/left")
                  if os.path.lexists(p)]
ipc = {}
for kind in ("shm", "sem", "msg"):
    rows = [line.split() for line in open(f"/proc/sysvipc/{kind}")][1:]
    ipc[kind] = [row[0] for row in rows if int(row[0]) in (0x4e5301, 0x4e5302, 0x4e5303)]
found["sysv ipc"] = ipc
probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    probe.connect("\0nsbox-left")
    found["abstract socket"] = True
except OSError:
    found["abstract socket"] = False
found["print patched"] = type(builtins.print).__name__ != "builtin_function_or_method"
found["json replaced"] = sys.modules.get("json") is None or not hasattr(sys.modules["json"], "dumps")
found["sigterm"] = int(signal.getsignal(signal.SIGTERM))  # SIG_DFL 0, SIG_IGN 1
found["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
found["cwd"] = os.getcwd()
found["env"] = os.environ.get("LEFT")
sys.stdout.write(repr(found))
"""

#: Leaves every trace, then runs the probe itself (the premise).
LEAVE = r"""
import builtins, ctypes, os, resource, signal, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
ready_r, ready_w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:  # the daemon: reparented to init, holds the abstract socket
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind("\0nsbox-left")
        listener.listen()
        os.write(ready_w, b"x")
        while True:
            signal.pause()
    os._exit(0)
os.wait()
os.read(ready_r, 1)
for path in ("/tmp/left", "left", "/dev/shm/left"):
    open(path, "w").write("left")
try:
    open("/workspace/left", "w")
    workspace = "written"
except PermissionError:
    workspace = "refused"
IPC_CREAT = 0o1000
assert libc.shmget(0x4e5301, 4096, IPC_CREAT | 0o600) >= 0
assert libc.semget(0x4e5302, 1, IPC_CREAT | 0o600) >= 0
assert libc.msgget(0x4e5303, IPC_CREAT | 0o600) >= 0
libc.mq_open.restype = ctypes.c_int
assert libc.mq_open(b"/left", os.O_CREAT | os.O_RDWR, 0o600, None) >= 0, ctypes.get_errno()
builtins.print = lambda *args, **kwargs: None
sys.modules["json"] = None
signal.signal(signal.SIGTERM, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
old_dir = os.getcwd()
os.chdir("/")
os.environ["LEFT"] = "yes"
"""


@pytest.fixture
def sandbox() -> Iterator[nsbox.NsSandbox]:
    require_run_code()
    with nsbox.NsSandbox(timeout=30) as box:
        yield box


def _probe(sandbox: nsbox.NsSandbox, old_dir: str) -> dict[str, Any]:
    result = sandbox.run_code(f"old_dir = {old_dir!r}\n" + PROBE)
    assert result.ok, result
    found: dict[str, Any] = ast.literal_eval((result.stdout or b"").decode())
    return found


def test_no_trace_of_an_earlier_program_reaches_the_next(sandbox: nsbox.NsSandbox) -> None:
    clean = _probe(sandbox, "/nonexistent")
    leaver = sandbox.run_code(LEAVE + PROBE + '\nsys.stdout.write("\\n" + old_dir + "\\n" + workspace)')
    assert leaver.ok, leaver
    probe_text, old_dir, workspace = (leaver.stdout or b"").decode().split("\n")
    left = ast.literal_eval(probe_text)
    # The premise: the leaver's own look finds every trace in place.
    assert len(left["processes of my uid"]) == 1, left
    assert sorted(left["files"]) == sorted(
        ["/tmp/left", f"{old_dir}/left", old_dir, "/dev/shm/left", "/dev/mqueue/left"]
    )
    assert all(len(ids) == 1 for ids in left["sysv ipc"].values()), left
    assert left["abstract socket"] and left["print patched"] and left["json replaced"], left
    assert (left["sigterm"], left["nofile"], left["cwd"], left["env"]) == (1, 64, "/", "yes")
    assert workspace == "refused", "programs cannot write the workspace (its owner's): nothing to clean there"

    after = _probe(sandbox, old_dir)
    assert after["processes of my uid"] == [], after
    assert after["files"] == [], after
    assert after["sysv ipc"] == {"shm": [], "sem": [], "msg": []}, after
    assert not after["abstract socket"] and not after["print patched"] and not after["json replaced"], after
    assert (after["sigterm"], after["nofile"], after["env"]) == (clean["sigterm"], clean["nofile"], None)
    assert after["cwd"].startswith("/tmp/program-") and after["cwd"] != old_dir


TAMPER = r"""
import ctypes, errno, json, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
warm = os.getppid()
tried = {}
def attempt(name, fn):
    try:
        fn()
        tried[name] = "ok"
    except OSError as exc:
        tried[name] = errno.errorcode.get(exc.errno, str(exc.errno))
def ptrace():
    if libc.ptrace(16, warm, None, None) != 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), "ptrace")
attempt("ptrace", ptrace)
attempt("mem", lambda: open(f"/proc/{warm}/mem", "rb").read(1))
attempt("stop", lambda: os.kill(warm, signal.SIGSTOP))
attempt("kill", lambda: os.kill(warm, signal.SIGKILL))
attempt("kill all", lambda: os.kill(-1, signal.SIGKILL))
others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
reniced = []
for pid in others:  # the warm interpreter's processes, the launcher, init: none may be slowed
    try:
        os.setpriority(os.PRIO_PROCESS, pid, 19)
        reniced.append(pid)
    except OSError:
        pass
tried["reniced"] = reniced
child = os.fork()
if child == 0:
    signal.pause()
attempt("stop own child", lambda: os.kill(child, signal.SIGSTOP))
attempt("kill own child", lambda: os.kill(child, signal.SIGKILL))
tried["warm"] = warm
print(json.dumps(tried))
"""


def test_a_program_cannot_trace_read_stop_or_kill_the_warm_interpreter(sandbox: nsbox.NsSandbox) -> None:
    sandbox.run_code("pass")
    result = sandbox.run_code(TAMPER)
    assert result.ok, result
    tried = json.loads(result.stdout or b"")
    assert (tried["stop own child"], tried["kill own child"]) == ("ok", "ok"), "the premise: signals work"
    assert tried["ptrace"] == "EPERM" and tried["mem"] in ("EACCES", "EPERM"), tried
    assert (tried["stop"], tried["kill"]) == ("EPERM", "EPERM"), tried
    assert tried["reniced"] == [], "no process of another uid can be reniced"
    after = sandbox.run_code("import os; print(os.getppid())")
    assert after.ok and after.path == "warm", after
    assert int(after.stdout or b"0") == tried["warm"], "the same warm interpreter forks the next program"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", Status.PIDS),
        ("while True:\n    pass", Status.TIMEOUT),
        ("b = bytearray(1 << 30)", Status.OOM),
        ("import os\nfor _ in range(100):\n    os.write(1, b'x' * (1 << 20))", Status.OUTPUT_LIMIT),
        ("import os\nos.close(1)\nprint('lost')", Status.EXIT),
    ],
    ids=["fork bomb", "endless loop", "memory", "100 MB of output", "stdout closed"],
)
def test_a_program_at_a_limit_gets_its_verdict_and_the_next_runs(code: str, expected: Status) -> None:
    require_run_code()
    with nsbox.NsSandbox(memory="256M", pids=64, output_limit="1M") as box:
        box.run_code("pass")
        result = box.run_code(code, timeout=3 if expected is Status.TIMEOUT or expected is Status.PIDS else 60)
        assert result.status is expected, result
        after = box.run_code("print('next')")
        assert after.ok and after.stdout == b"next\n", after


#: Reads every readable mapping of its own process and says which of NEEDLES (pairs of
#: halves: a whole needle is never in its memory unless it came from elsewhere) it finds.
MEMORY_SCAN = r"""
import ctypes, sys
mine = sys.stdin.read()  # its own input: the premise that the scan finds what is there
found = set()
with open("/proc/self/maps") as maps:  # read in place (a program is not dumpable: no /proc/self/mem)
    regions = [line.split() for line in maps]
for fields in regions:
    if fields[1][0] != "r" or (len(fields) > 5 and fields[5].startswith("[v")):
        continue
    start, end = (int(x, 16) for x in fields[0].split("-"))
    data = ctypes.string_at(start, end - start)
    for number, (head, tail) in enumerate(NEEDLES):
        at = data.find(head.encode())
        while at >= 0:
            if data[at + len(head) : at + len(head) + len(tail)] == tail.encode():
                found.add(number)
            at = data.find(head.encode(), at + 1)
print(sorted(found))
"""


def test_no_program_finds_an_earlier_programs_code_or_input_in_its_memory(sandbox: nsbox.NsSandbox) -> None:
    code_half, input_half, own_half = "c0de" * 4, "1nput" * 4, "0wn" * 5
    head = "nsbox-secret-"
    sandbox.run_code(f"print({head + code_half!r})", stdin=head + input_half, files={"f": head + input_half})
    needles = f"NEEDLES = [({head!r}, {code_half!r}), ({head!r}, {input_half!r}), ({head!r}, {own_half!r})]\n"
    scan = sandbox.run_code(needles + MEMORY_SCAN, stdin=head + own_half)
    assert scan.ok, scan
    assert scan.stdout == b"[2]\n", "the premise (its own input, 2) is found; the earlier program's code and input not"


def test_a_programs_changes_to_its_stdout_pipe_do_not_reach_the_next(sandbox: nsbox.NsSandbox) -> None:
    fiddle = (
        "import fcntl, os\nfcntl.fcntl(1, fcntl.F_SETFL, os.O_NONBLOCK)\nfcntl.fcntl(1, 1031, 4096)  # F_SETPIPE_SZ"
    )
    assert sandbox.run_code(fiddle).ok
    big = sandbox.run_code("import sys, time\ntime.sleep(0.2)\nsys.stdout.write('y' * (1 << 20))")
    assert big.ok and big.stdout == b"y" * (1 << 20), (big.status, big.stderr)


def test_a_deep_unreadable_tree_is_swept_and_the_warm_interpreter_stays(sandbox: nsbox.NsSandbox) -> None:
    deep = (
        "import os\n"
        "os.mkdir('/tmp/deep'); os.chdir('/tmp/deep')\n"
        "for i in range(1200):\n"
        "    os.mkdir('d' * 200); os.chdir('d' * 200)\n"  # some 240,000 characters of path
        "open('bottom', 'w').write('x')\n"
        "os.chdir('/tmp'); os.chmod('/tmp/deep', 0)\n"
    )
    assert sandbox.run_code(deep, timeout=60).ok
    after = sandbox.run_code("import os; print(os.path.lexists('/tmp/deep'))")
    assert after.ok and after.stdout == b"False\n" and after.path == "warm", after


def test_what_the_sandbox_user_leaves_does_not_stop_the_sweep(sandbox: nsbox.NsSandbox) -> None:
    """uid 1000 (runs, the kernel) may leave private directories, and a FIFO where the warm
    interpreter reads .pth files as it starts: programs go on, forked from a warm interpreter."""
    setup = "mkdir -m 700 /tmp/mine && mkdir -p /workspace/.packages && mkfifo /workspace/.packages/x.pth"
    assert sandbox.run(["sh", "-c", setup]).ok
    first = sandbox.run_code("print('a')", timeout=20)
    second = sandbox.run_code("print('b')")
    assert first.ok and second.ok and second.path == "warm", (first, second)


def test_a_build_depends_on_the_files_beside_the_source(sandbox: nsbox.NsSandbox) -> None:
    harness = '#include <stdio.h>\n#include "solution.h"\nint main(){printf("%d\\n", answer());}'
    one = sandbox.run_code(harness, language="c", files={"solution.h": "int answer(void){return 1;}"})
    two = sandbox.run_code(harness, language="c", files={"solution.h": "int answer(void){return 2;}"})
    assert (one.stdout, two.stdout) == (b"1\n", b"2\n"), (one, two)


def test_what_no_sweep_can_remove_ends_run_code_in_that_sandbox(sandbox: nsbox.NsSandbox) -> None:
    """A file of a program's left where the sweep cannot reach it (the sandbox user takes
    away the write permission of the directory it is in, between the program's end and the
    sweep): the warm interpreter goes, and the next one refuses to start on it, so no
    program runs beside the trace; the call says so and the sandbox ends (SandboxError: a
    Judge replaces it)."""
    watcher = "mkdir -m 777 /tmp/box; (while [ ! -e /tmp/box/f ]; do sleep 0.01; done; chmod 755 /tmp/box) &"
    assert sandbox.run(["sh", "-c", watcher]).ok
    left = sandbox.run_code("import time\nopen('/tmp/box/f', 'w').write('trace')\ntime.sleep(0.5)")
    assert left.ok, left
    assert sandbox.run(["cat", "/tmp/box/f"], capture_output=True).stdout == b"trace", "the premise: it is there"
    with pytest.raises(nsbox.SandboxError, match="cannot be removed"):
        sandbox.run_code("print(open('/tmp/box/f').read())")
    with pytest.raises(nsbox.SandboxError):
        sandbox.run(["true"])  # the sandbox ended with it
