"""The warm interpreter of run_code: runs INSIDE a sandbox, under the sandbox's own python3.

Init forks it (``_child.payload_main`` with ``warm``) under the payload's rlimits, no_new_privs and seccomp
filter, but as uid 0 of the sandbox's user namespace holding exactly CAP_SETUID,
CAP_SETGID and CAP_SETPCAP: what it takes to turn a forked child into a program and take
those away again. It imports what programs commonly use once, then for each ``program``
frame forks a child that becomes the program (``_become_program``):

* its own session; stdin the request's bytes (a memfd), stdout and stderr ours (the
  supervisor's pipes), every other fd closed; the signal dispositions python3 starts with
  (a bash or compiled program gets SIGINT, SIGPIPE and SIGXFSZ back at their defaults);
* the program uid and gid (argv: 1001), with no capability in any set, the bounding set
  included, and the OOM killer's first choice;
* a new empty directory in /tmp as its working directory, with the request's files;
* Python code runs as ``__main__`` of this forked interpreter (so it pays a fork, not an
  interpreter's start); bash is exec'd on the code's file; C and C++ are compiled once per
  source (by such a child: the compiler runs as the program uid) into a memfd that we seal
  and keep, and exec'd from it.

The child is forked ahead of need, right after the last program's sweep, and takes all of
these steps but the last while nothing waits for it.

A program cannot reach this process: another uid (no signal, no ptrace, no
/proc/PID/mem; ptrace is refused by the filter anyway), and whatever it changes of the
interpreter (builtins, sys.modules, signals, rlimits, environment, cwd) is its forked copy.

After a program ends, or when the supervisor says ``stop_program``, the sweeper (a child
of ours from the start, with real and saved uid SWEEPER (argv: 1002, a uid no process
has) and effective uid the program's) kills every process of the program uid (kill(-1) until none is left: daemons
included), then removes every file and directory the program uid owns under /tmp,
/dev/shm, /workspace and /dev/mqueue, and every System V IPC object it owns. Programs
cannot signal it (its real and saved uid are not theirs), and it signals nothing else
(kill(2) needs the target's real or saved uid to be one of its own). ``program_done``
goes out after the kill (``clean``: no process of the uid is left), the rest of the sweep
after it. If either part fails, this process exits, and the supervisor clears the
sandbox's processes; the next program starts a new warm interpreter, whose sweeper first
removes what is left (the slow path).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import gc
import hashlib
import json
import os
import select
import signal
import socket
import stat
import subprocess  # nosec B404  # runs the sandbox's compiler: fixed argv
import sys
import tempfile
import time
import traceback
import types
from typing import Any

from nsbox._guest.wire import PACKET, Wire, take_stdin

#: What programs commonly import, loaded once here (a program pays nothing for them).
PRELOAD = (*("collections", "functools", "itertools", "math", "re", "typing"),)
SWEPT = ("/tmp", "/dev/shm", "/workspace", "/dev/mqueue")  # nosec B108  # the sandbox's own tmpfs and mqueue mount
SWEEP_TIMEOUT = 2.0
#: The compilers of the compiled languages (each program's source is compiled once per
#: warm interpreter; MAX_BUILDS are kept), and the name of the source file for each.
COMPILERS = {"c": ("gcc", "-O2", "-std=gnu17", "-pipe", "-lm"), "cpp": ("g++", "-O2", "-std=gnu++17", "-pipe")}
SOURCE_NAMES = {"python": "main.py", "bash": "main.sh", "c": "main.c", "cpp": "main.cpp"}
MAX_BUILDS = 32
PACKAGES = "/workspace/.packages"  # where install_packages puts them (pip --target)
_PR_SET_DUMPABLE, _PR_SET_PDEATHSIG, _PR_CAPBSET_DROP = 4, 1, 24
_CAP_SETGID, _CAP_SETUID, _CAP_SETPCAP = 6, 7, 8
_IPC_RMID = 0
_LIBC = ctypes.CDLL(None, use_errno=True)


def _prctl(*args: int) -> None:
    if _LIBC.prctl(*(ctypes.c_ulong(a) for a in args), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl{args}: {os.strerror(err)}")


class Sweeper:
    """The sweeper: a child of ours for good, with real and saved uid SWEEPER and effective
    uid the program's (see the module's docstring). Asked over a pipe: ``k`` kills every
    process of the program uid, ``c`` removes its files and IPC objects; it answers one
    byte, ``y`` for done. It sweeps once as it starts (what an earlier warm interpreter
    could not remove)."""

    def __init__(self, uid: int, sweeper_uid: int) -> None:
        ask_r, self._ask = os.pipe2(os.O_CLOEXEC)
        self._answer, answer_w = os.pipe2(os.O_CLOEXEC)
        self.pid = os.fork()
        if self.pid == 0:
            code = 2
            try:
                gc.disable()
                os.setresgid(sweeper_uid, uid, sweeper_uid)
                os.setresuid(sweeper_uid, uid, sweeper_uid)  # no capability is left
                _serve_sweeps(uid, ask_r, answer_w)
                code = 0
            finally:
                os._exit(code)
        os.close(ask_r)
        os.close(answer_w)

    def ask(self, what: bytes) -> bool:
        """``what`` done? (``b""``: the answer of its first sweep.)"""
        try:
            os.write(self._ask, what)
            return os.read(self._answer, 1) == b"y"
        except OSError:  # it died: nothing is known to be clean
            return False


class Warm:
    def __init__(self, wire: Wire, program_uid: int, sweeper: Sweeper) -> None:
        self.wire = wire
        self.uid = program_uid
        self.sweeper = sweeper
        #: the forked child that waits for the next program: (pid, its socket, its memfd)
        self.next: tuple[int, socket.socket, int] | None = None
        self.builds: dict[str, int] = {}  #: compiled programs, sealed memfds, by their source's hash

    def serve(self) -> None:
        self.fork_next()
        while True:
            request = self.wire.recv()
            if request is None or request.get("type") != "program":
                return
            if not self.run(request):
                return

    def fork_next(self) -> None:
        """The next program's process, forked now (while nothing waits for it): it takes
        the program's identity and directory at once, then waits for the program. Its
        memfd (fd 4 there) is where a compiler's output goes."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        output = os.memfd_create("program", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        pid = os.fork()
        if pid == 0:
            _program_main(theirs.fileno(), output, self.uid)
        theirs.close()
        self.next = (pid, ours, output)

    def run(self, request: dict[str, Any]) -> bool:
        """One program, compiled first if its language needs it and this source was not;
        False if it left something the sweep could not remove (then we exit)."""
        number = request.get("number")
        self.wire.send({"type": "program_started", "number": number})
        language = request.get("language", "")
        binary: int | None = None
        if language in COMPILERS:
            key = hashlib.sha256(f"{language}\0{request.get('code', '')}".encode("utf-8", "surrogatepass")).hexdigest()
            binary = self.builds.get(key)
            compiled: dict[str, Any] = {"wait_status": 0, "clean": True}  # nothing to do: it is built
            if binary is None:
                built, done = self.execute(dict(request, op="compile"), None)
                if done is None:
                    return False
                if built is None:  # it failed, or was stopped
                    self.reply(number, "compile", done)
                    return True
                binary, compiled = self.remember(key, built), done
            if request.get("compile_only"):
                self.reply(number, "compile", compiled)
                return True
        _, done = self.execute(dict(request, op="run"), binary)
        if done is None:
            return False
        self.reply(number, "run", done)
        return True

    def execute(self, request: dict[str, Any], binary: int | None) -> tuple[int | None, dict[str, Any] | None]:
        """Hand ``request`` to the waiting child (with ``binary`` to exec), wait for its end
        or a stop, sweep, and fork the next child. Returns (the child's memfd if it
        compiled, its end); the end is None if the sweep failed (then it was reported)."""
        assert self.next is not None  # nosec B101  # forked after every program
        (pid, sock, output), self.next = self.next, None
        number = request.get("number")
        pidfd = os.pidfd_open(pid)
        with contextlib.suppress(OSError):  # it failed before (its stderr says why)
            data = json.dumps(request).encode()
            socket.send_fds(sock, [data[:PACKET]], [] if binary is None else [binary])
            sock.sendall(data[PACKET:])
        sock.close()  # the program reads to the end
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.register(self.wire.sock.fileno(), select.POLLIN)
        stopped = False
        while not stopped:
            if pidfd in dict(poller.poll()):
                break
            frame = self.wire.recv()  # None: the supervisor is gone (so are we, after the sweep)
            stopped = frame is None or (frame.get("type") == "stop_program" and frame.get("number") == number)
        os.close(pidfd)
        if stopped:
            killed = self.sweeper.ask(b"k")  # it too: then it is a zombie, reaped next
            got, status, usage = os.wait4(pid, 0 if killed else os.WNOHANG)
        else:
            got, status, usage = os.wait4(pid, 0)  # first: a zombie of ours would count as alive
            killed = self.sweeper.ask(b"k")
        done = {
            "wait_status": status if got == pid and not stopped else int(signal.SIGKILL),
            "clean": killed,
            "cpu_s": usage.ru_utime + usage.ru_stime if got == pid else 0.0,
            "memory_peak_bytes": usage.ru_maxrss * 1024 if got == pid else 0,
        }
        built = output if request.get("op") == "compile" and not stopped and status == 0 else None
        if built is None:
            os.close(output)
        if not (killed and self.sweeper.ask(b"c")):
            self.reply(number, request.get("op", "run"), done)
            return None, None  # the supervisor clears what is left; the next warm interpreter sweeps
        self.fork_next()
        return built, done

    def remember(self, key: str, built: int) -> int:
        """Seal the compiler's output (no one can change it now) and keep it; the oldest
        build goes when there are MAX_BUILDS."""
        fcntl.fcntl(
            built, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        )
        if len(self.builds) >= MAX_BUILDS:
            os.close(self.builds.pop(next(iter(self.builds))))
        self.builds[key] = built
        return built

    def reply(self, number: Any, stage: str, done: dict[str, Any]) -> None:
        self.wire.send({"type": "program_done", "number": number, "stage": stage, **done})


def _program_main(sock_fd: int, output: int, uid: int) -> None:
    """The forked child: become the program, wait for it, compile or run it, exit with its
    status. Never returns."""
    try:
        workdir = _become_program(sock_fd, output, uid)
        request, binary = _receive(3)
        stdin = _memfd(base64.b64decode(request.get("stdin") or ""))
        os.dup2(stdin, 0)
        os.close(stdin)
        language = str(request.get("language"))
        path = os.path.join(workdir, SOURCE_NAMES.get(language, "main.py"))
        code = request.get("code", "")
        _write(path, code.encode("utf-8", "surrogatepass"))
        for name, data in (request.get("files") or {}).items():
            _write(_inside(workdir, name), base64.b64decode(data))
        if request.get("op") == "compile":
            os._exit(_compile(language, path, workdir))
        os.close(4)  # a compiler's output: a program has nothing to write there
        if language != "python":
            for sig in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):  # Python's own choices
                signal.signal(sig, signal.SIG_DFL)
            if binary is not None:
                os.execve(binary, ["main"], os.environ)  # nosec B606  # the program's own, compiled here
            os.execv("/bin/bash", ["bash", path])  # nosec B606  # running the program is the point
        os._exit(_run_python(code, path))
    except BaseException as exc:  # a child must never unwind into the warm interpreter's loop
        _show(exc, exc.__traceback__)
        os._exit(127)


def _receive(fd: int) -> tuple[dict[str, Any], int | None]:
    """The request from the warm interpreter, and the fd of a compiled program with it."""
    sock = socket.socket(fileno=fd)
    data, fds, _, _ = socket.recv_fds(sock, PACKET, 1)
    chunks = [data]
    while chunk := sock.recv(PACKET):
        chunks.append(chunk)
    sock.close()
    for fd in fds:
        os.set_inheritable(fd, False)  # the program is exec'd from it; it does not keep it
    return json.loads(b"".join(chunks)), (fds[0] if fds else None)


def _compile(language: str, path: str, workdir: str) -> int:
    """Run the compiler; its output goes to fd 4 (the memfd the warm interpreter keeps)."""
    out = os.path.join(workdir, "main")
    argv = [*COMPILERS[language], "-o", out, path, "-lm"]
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False)  # nosec B603  # the compiler, fixed argv
    if done.returncode != 0:
        return done.returncode
    with open(out, "rb") as f:
        _write_all(4, f.read())
    return 0


def _become_program(sock_fd: int, output: int, uid: int) -> str:
    """The steps, in order; see the module's docstring. Returns the working directory.
    Signal dispositions stay as python3 sets them (SIGPIPE and SIGXFSZ ignored, SIGINT
    KeyboardInterrupt): a Python program sees what ``python3 main.py`` would."""
    os.setsid()
    os.dup2(sock_fd, 3)  # the request's socket, closed before the program runs
    os.dup2(output, 4, inheritable=False)  # a compiler's output
    os.closerange(5, os.sysconf("SC_OPEN_MAX"))
    _prctl(_PR_SET_DUMPABLE, 1)  # /proc/self is ours for the write (still uid 0)
    with open("/proc/self/oom_score_adj", "w", encoding="ascii") as f:
        f.write("1000")
    for cap in (_CAP_SETGID, _CAP_SETUID, _CAP_SETPCAP):
        _prctl(_PR_CAPBSET_DROP, cap)
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # from uid 0 to none: permitted, effective and ambient are cleared
    _prctl(_PR_SET_DUMPABLE, 0)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by the uid change
    with open("/proc/thread-self/status", "rb") as f:
        for line in f:
            if line.startswith(b"Cap") and int(line.split()[1], 16) != 0:
                raise PermissionError(f"capabilities remain: {line.decode().strip()}")
    workdir = tempfile.mkdtemp(prefix="program-", dir="/tmp")  # nosec B108  # the sandbox's own /tmp
    os.chdir(workdir)
    os.environ["HOME"] = workdir
    return workdir


def _run_python(source: str, path: str) -> int:
    """Run ``source`` (the file ``path``) as ``python3 path`` would, in this forked
    interpreter; its exit status."""
    import atexit
    import threading

    module = types.ModuleType("__main__")
    module.__file__ = path
    sys.modules["__main__"] = module
    sys.argv = [path]
    sys.path.insert(0, os.path.dirname(path))
    status = 0
    try:
        exec(compile(source, path, "exec"), module.__dict__)  # nosec B102  # inside the sandbox: running it is the point
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except BaseException as exc:
        status = 1
        _show(exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # what the interpreter's exit does: join threads
        atexit._run_exitfuncs()
    except BaseException as exc:
        _show(exc, exc.__traceback__)
        status = status or 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # its stdout closed: python3 exits 120 then
            status = status or 120
    return status


def _show(exc: BaseException, tb: types.TracebackType | None) -> None:
    """The traceback on fd 2, as python3 shows it (not through print or sys.stderr, which
    the program may have replaced)."""
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    with contextlib.suppress(OSError):
        _write_all(2, text.encode("utf-8", "backslashreplace"))


def _exit_status(code: object) -> int:
    """As the interpreter turns sys.exit's argument into a status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _inside(workdir: str, name: str) -> str:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"a file name must be relative, without '.' or '..': {name!r}")
    path = os.path.join(workdir, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("stdin", os.MFD_CLOEXEC)
    _write_all(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# --- the sweeper (real and saved uid SWEEPER, effective the program's) -----------------------
def _serve_sweeps(uid: int, ask: int, answer: int) -> None:
    clean = _kill_all(uid) and _remove_all(uid)
    os.write(answer, b"y" if clean else b"n")
    while what := os.read(ask, 1):
        done = _kill_all(uid) if what == b"k" else _remove_all(uid)
        os.write(answer, b"y" if done else b"n")


def _remove_all(uid: int) -> bool:
    clean = True
    for top in SWEPT:
        clean &= _remove_owned(top, uid)
    return _remove_ipc(uid) and clean


def _kill_all(uid: int) -> bool:
    """kill(-1) reaches exactly the processes of the uid (and none of the others: see the
    module's docstring), but it succeeds while any other process exists: so until a look
    at /proc finds none of the uid alive. A killed process can fork no more."""
    deadline = time.monotonic() + SWEEP_TIMEOUT
    while True:
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        if not _any_alive(uid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0002)


def _any_alive(uid: int) -> bool:
    """Whether a process but us with ``uid`` as its real, effective or saved uid is alive (a
    zombie is not: it holds nothing, and init or we reap it)."""
    mine, me = str(uid), str(os.getpid())
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == me:
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                status = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
        except OSError:  # it ended meanwhile
            continue
        if status.get(b"State", b"").split()[:1] in ([b"Z"], [b"X"]):
            continue
        if mine.encode() in status.get(b"Uid", b"").split()[:3]:
            return True
    return False


def _remove_owned(top: str, uid: int) -> bool:
    """Remove everything under ``top`` owned by ``uid``; look into every other directory."""
    clean = True
    try:
        entries = list(os.scandir(top))
    except FileNotFoundError:
        return True
    except OSError:
        return False  # a directory we cannot read could hold the program's files
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if info.st_uid == uid:
            clean &= _remove_tree(entry.path, info)
        elif stat.S_ISDIR(info.st_mode):
            clean &= _remove_owned(entry.path, uid)
    return clean


def _remove_tree(path: str, info: os.stat_result) -> bool:
    """Ours: a directory is made searchable first (the program may have chmod'ed it 000)."""
    try:
        if stat.S_ISDIR(info.st_mode):
            os.chmod(path, 0o700)
            for entry in os.scandir(path):
                if not _remove_tree(entry.path, entry.stat(follow_symlinks=False)):
                    return False
            os.rmdir(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False  # e.g. another uid's file in a directory of ours: the slow path clears it
    return True


def _remove_ipc(uid: int) -> bool:
    """System V shared memory, semaphores and message queues the uid owns or created."""
    clean = True
    for kind, column in (("shm", "shmid"), ("sem", "semid"), ("msg", "msqid")):
        try:
            with open(f"/proc/sysvipc/{kind}", encoding="ascii") as f:
                header, *rows = [line.split() for line in f]
        except OSError:
            return False
        ident, owner, creator = header.index(column), header.index("uid"), header.index("cuid")
        for row in rows:
            if uid in (int(row[owner]), int(row[creator])) and _remove_ipc_object(kind, int(row[ident])) != 0:
                clean = False
    return clean


def _remove_ipc_object(kind: str, ident: int) -> int:
    if kind == "shm":
        return int(_LIBC.shmctl(ident, _IPC_RMID, None))
    if kind == "sem":
        return int(_LIBC.semctl(ident, 0, _IPC_RMID))
    return int(_LIBC.msgctl(ident, _IPC_RMID, None))


def _add_site_packages() -> None:
    """What ``site`` puts on sys.path (the interpreter runs with -S), and the packages of
    install_packages; the directories that .pth files name are added, their ``import``
    lines are not run (they could load anything into every program: a fork gets slower
    with each page we hold)."""
    import site

    for directory in [*site.getsitepackages(), PACKAGES]:
        if not os.path.isdir(directory) or directory in sys.path:
            continue
        sys.path.append(directory)
        for name in sorted(os.listdir(directory)):
            if not name.endswith(".pth"):
                continue
            with contextlib.suppress(OSError, UnicodeDecodeError), open(os.path.join(directory, name)) as f:
                for line in f.read().splitlines():
                    path = os.path.join(directory, line.rstrip())
                    if line.strip() and not line.startswith(("#", "import ", "import\t")) and os.path.isdir(path):
                        sys.path.append(path)


def main() -> None:
    program_uid, sweeper_uid = (int(arg) for arg in sys.argv[1:])
    wire = take_stdin()
    _prctl(_PR_SET_DUMPABLE, 0)
    sweeper = Sweeper(program_uid, sweeper_uid)
    if not sweeper.ask(b""):  # its first sweep
        raise SystemExit("what an earlier program left could not be removed")
    _add_site_packages()
    for name in PRELOAD:
        __import__(name)
    gc.freeze()  # what is here now is never scanned again: a collection in a fork copies nothing
    wire.send({"type": "warm_ready", "python": sys.version.split()[0]})
    Warm(wire, program_uid, sweeper).serve()


if __name__ == "__main__":
    main()
