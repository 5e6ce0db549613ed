"""run_code (issue 19): one program per call, each in a fresh process forked from the
sandbox's warm interpreter. What a caller sees: output, exit status, exceptions, stdin,
files, bash, limits, and which path each run took. The attacks on its isolation between
programs are in tests/security/test_run_code_isolation.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import nsbox
from nsbox import SandboxError, SpecError, Status
from tests.conftest import OWN_IDS, require_run_code, require_sandbox, wait_until


@pytest.fixture(scope="module")
def sandbox() -> Iterator[nsbox.NsSandbox]:
    require_run_code()
    with nsbox.NsSandbox(timeout=20) as box:
        yield box


def test_a_program_runs_as_main_with_its_output_and_status(sandbox: nsbox.NsSandbox) -> None:
    result = sandbox.run_code(
        "import sys\nprint(__name__, sys.argv[0].endswith('main.py'))\nprint('e', file=sys.stderr)"
    )
    assert result.status is Status.OK and result.exit_code == 0, result
    assert (result.stdout, result.stderr) == (b"__main__ True\n", b"e\n")
    assert result.path in ("warm", "cold") and result.args == ("python",)
    assert result.memory_peak_bytes and result.memory_peak_bytes > 0 and result.cpu_s >= 0


def test_the_first_program_starts_the_warm_interpreter_and_the_next_are_forked_from_it() -> None:
    require_run_code()
    with nsbox.NsSandbox() as box:
        paths = [box.run_code("pass").path for _ in range(3)]
        parents = {box.run_code("import os; print(os.getppid())").stdout for _ in range(2)}
    assert paths == ["cold", "warm", "warm"], paths
    assert len(parents) == 1, f"one warm interpreter forks every program: {parents}"


def test_exit_statuses_follow_python3(sandbox: nsbox.NsSandbox) -> None:
    assert sandbox.run_code("import sys; sys.exit(3)").exit_code == 3
    assert sandbox.run_code("raise SystemExit").exit_code == 0
    message = sandbox.run_code("import sys; sys.exit('bye')")
    assert (message.exit_code, message.stderr) == (1, b"bye\n")
    failed = sandbox.run_code("x = 1\nraise ValueError('boom')")
    assert failed.status is Status.EXIT and failed.exit_code == 1, failed
    assert failed.stderr is not None and failed.stderr.startswith(b"Traceback (most recent call last):\n")
    assert b'main.py", line 2, in <module>' in failed.stderr and failed.stderr.endswith(b"ValueError: boom\n")
    assert b"nsbox" not in failed.stderr, "the traceback shows the program's frames only"
    killed = sandbox.run_code("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert (killed.status, killed.signal) == (Status.SIGNAL, 15), killed


def test_atexit_handlers_and_threads_finish_as_in_python3(sandbox: nsbox.NsSandbox) -> None:
    code = (
        "import atexit, threading, time\n"
        "atexit.register(print, 'at exit')\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread'))).start()\n"
        "print('main')"
    )
    assert sandbox.run_code(code).stdout == b"main\nthread\nat exit\n"


def test_stdin_and_files_reach_the_program_in_its_own_directory(sandbox: nsbox.NsSandbox) -> None:
    code = (
        "import json, os, sys\n"
        "print(json.dumps({'stdin': sys.stdin.read(), 'data': open('data/in.txt').read(),"
        " 'bin': open('raw', 'rb').read().hex(), 'cwd': os.getcwd(), 'home': os.environ['HOME'],"
        " 'uid': os.getuid(), 'listing': sorted(os.listdir('.'))}))"
    )
    result = sandbox.run_code(code, stdin="line 1\nline 2\n", files={"data/in.txt": "text", "raw": b"\x00\xff"})
    assert result.ok, result
    seen = json.loads(result.stdout or b"")
    assert (seen["stdin"], seen["data"], seen["bin"]) == ("line 1\nline 2\n", "text", "00ff")
    assert seen["cwd"].startswith("/tmp/program-") and seen["home"] == seen["cwd"]
    assert seen["uid"] == 1001 and seen["listing"] == ["data", "main.py", "raw"]
    assert sandbox.run_code("import sys; print(repr(sys.stdin.read()))").stdout == b"''\n", "no stdin: empty"


@pytest.mark.parametrize("name", ["../up", "/abs", "a/../b", "", "./x"])
def test_a_file_name_that_leaves_the_directory_fails_the_program(sandbox: nsbox.NsSandbox, name: str) -> None:
    result = sandbox.run_code("print('ran')", files={name: "x"})
    assert result.exit_code == 127 and result.stdout == b"", result
    assert result.stderr is not None and b"a file name must be relative" in result.stderr


def test_a_programs_children_and_a_compilers_end_quietly(sandbox: nsbox.NsSandbox) -> None:
    """The fork server's SIGCHLD wake-up is not a program's: a child's end (the program's own
    subprocess, the compiler run for a C program) must not print anything on its stderr."""
    spawned = sandbox.run_code("import subprocess\nprint(subprocess.run(['true']).returncode)")
    assert spawned.ok and spawned.stdout == b"0\n" and spawned.stderr == b"", spawned
    compiled = sandbox.run_code("int main(void) { return 0; }", language="c")
    assert compiled.ok and compiled.stderr == b"", compiled
    judged = sandbox.judge("int main(void) { return 0; }", [], language="cpp", compile_timeout=30)
    assert judged.compile is not None and judged.compile.ok and judged.compile.stderr == b"", judged


def test_bash_programs_run_with_default_signals(sandbox: nsbox.NsSandbox) -> None:
    result = sandbox.run_code('read x; echo "got $x as $(id -u)"; trap -p', language="bash", stdin="hi\n")
    assert result.ok and result.stdout == b"got hi as 1001\n", result
    piped = sandbox.run_code("yes | head -1", language="bash")
    assert piped.ok and piped.stdout == b"y\n", "SIGPIPE ends yes, as outside Python"


def test_an_unknown_language_is_refused_and_the_sandbox_goes_on(sandbox: nsbox.NsSandbox) -> None:
    with pytest.raises(SpecError, match="language"):
        sandbox.run_code("x", language="cobol")
    assert sandbox.run_code("print(1)").stdout == b"1\n"


def test_a_timeout_ends_the_program_and_the_warm_interpreter_stays(sandbox: nsbox.NsSandbox) -> None:
    slow = sandbox.run_code("import time\nprint('start', flush=True)\ntime.sleep(60)", timeout=0.5)
    assert slow.status is Status.TIMEOUT and slow.stdout == b"start\n", slow
    assert slow.wall_s < 10
    after = sandbox.run_code("print('next')")
    assert after.ok and after.path == "warm", after


def test_output_beyond_the_limit_is_dropped() -> None:
    require_run_code()
    with nsbox.NsSandbox(output_limit="64K") as box:
        result = box.run_code("import sys\nsys.stdout.write('x' * (1 << 20))")
        assert result.status is Status.OUTPUT_LIMIT and result.stdout_truncated, result
        assert result.stdout == b"x" * (64 << 10)
        assert box.run_code("print('small')").stdout == b"small\n"


def test_random_state_is_new_in_every_program(sandbox: nsbox.NsSandbox) -> None:
    draws = {sandbox.run_code("import random; print(random.random())").stdout for _ in range(3)}
    assert len(draws) == 3, draws


def test_own_mode_refuses_run_code() -> None:
    require_sandbox()
    if not OWN_IDS:
        pytest.skip("runs in the rootless pass without subordinate ids (own mode)")
    with nsbox.NsSandbox() as box, pytest.raises(SandboxError, match="subordinate"):
        box.run_code("pass")


def _host_pid(inner: int, pid_namespace: str) -> int | None:
    """The host pid of the process that is ``inner`` in the pid namespace ``pid_namespace``
    (as /proc/PID/ns/pid names it)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            namespace = os.readlink(f"/proc/{entry}/ns/pid")
        except OSError:
            continue
        nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        if namespace == pid_namespace and len(nspid) > 1 and int(nspid[-1]) == inner:
            return int(entry)
    return None


def _ended(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_a_warm_interpreter_that_died_between_programs_is_replaced() -> None:
    """Its fork server killed from outside (the OOM killer could): the next program is not
    lost with it (it goes to a new warm interpreter, whose first sweep ends what is left)."""
    require_run_code()
    with nsbox.NsSandbox() as box:
        seen = box.run_code("import os; print(os.getppid(), os.readlink('/proc/self/ns/pid'))").stdout or b""
        inner, namespace = seen.decode().split()
        warm = _host_pid(int(inner), namespace)
        assert warm is not None, "the premise: the warm interpreter is found on the host"
        assert Path(f"/proc/{warm}/cmdline").read_bytes().startswith(b"python3\0-I\0-S\0-c\0")
        os.kill(warm, signal.SIGKILL)
        assert wait_until(lambda: _ended(warm)), "the premise: it is gone before the next program"
        after = box.run_code("print('still here')")
        assert after.ok and after.stdout == b"still here\n" and after.path == "cold", after


ALLOCATE_200M = "big = b'\\x01' * (200 << 20)"  # written: its pages are really charged


def test_a_programs_own_memory_limit_ends_it_and_is_lifted_after() -> None:
    require_run_code()
    with nsbox.NsSandbox(memory="512M") as box:
        assert box.run_code(ALLOCATE_200M).ok, "the premise: 200 MB fit in the sandbox"
        capped = box.run_code(ALLOCATE_200M, memory="64M")
        assert capped.status is Status.OOM and capped.oom_killed, capped
        c_program = (
            "#include <stdlib.h>\n"
            "int main(){volatile char*p=malloc(200<<20);for(long i=0;i<(200<<20);i+=4096)p[i]=1;return 0;}"
        )
        assert box.run_code(c_program, language="c", memory="64M").status is Status.OOM
        after = box.run_code(ALLOCATE_200M)
        assert after.ok and after.path == "warm", "the sandbox's own limit is back, the warm interpreter kept"
    with pytest.raises(SpecError, match="memory"):
        nsbox.NsSandbox(memory="64K").run_code("pass")
    with nsbox.NsSandbox(cgroups=False) as box, pytest.raises(SpecError, match="cgroups"):
        box.run_code("pass", memory="64M")


def test_sandbox_client_runs_and_judges_programs() -> None:
    require_run_code()

    async def use() -> tuple[nsbox.RunResult, nsbox.JudgeResult]:
        async with nsbox.SandboxClient() as client:
            ran = await client.run_code("print(input()[::-1])", stdin="abc\n")
            judged = await client.judge("print(input()[::-1])", [("abc\n", "cba\n")])
            return ran, judged

    ran, judged = asyncio.run(use())
    assert ran.ok and ran.stdout == b"cba\n", ran
    assert judged.accepted, judged
