"""The warm interpreter of run_code: runs INSIDE a sandbox, under the sandbox's own python3.

Init forks it (``_child.payload_main`` with ``warm``) under the payload's rlimits,
no_new_privs and seccomp filter, but as uid 0 of the sandbox's user namespace holding
exactly CAP_SETUID, CAP_SETGID and CAP_SETPCAP: what it takes to turn a forked child into
a program and take those away again. Three kinds of process of ours, all forked before
any program's request exists anywhere in them:

* **this one** (the handler): loads what programs commonly import, then forks the fork
  server and takes the supervisor's ``program`` frames. It hands each request to a child
  that waits for it, answers ``program_started`` and ``program_done``, and keeps the
  compiled programs (sealed memfds). Its memory holds requests; nothing is forked from it
  after the fork server.
* **the fork server**: forked right after start-up, it never sees a request (its commands
  are one byte). It forks each program's process ahead of need and each sweeper, reaps
  them and reports their ends, so every program starts from memory no earlier program's
  request or data ever touched.
* **a program's process** becomes the program before its request exists
  (``_become_program``): its own session; every fd but its request's socket closed; the
  program uid and gid (argv: 1001) with no capability in any set, the bounding set
  included; the OOM killer's first choice. It is forked while the last program's sweep
  still runs, and waits: its request comes once the sweep is over. Then it takes a new
  empty directory in /tmp as its working directory and HOME, its stdout and stderr (pipes
  of this program's own, from the supervisor), stdin (the request's bytes, in a memfd),
  its files, and runs the program: Python as ``__main__`` of this forked interpreter, with
  the signal dispositions python3 starts with (so it pays a fork, not an interpreter's
  start); bash exec'd on the code's file; C and C++ compiled once per source and files (by
  such a process: the compiler runs as the program uid) into a memfd that the handler
  seals and keeps, and exec'd from it (a bash or compiled program gets SIGINT, SIGPIPE and
  SIGXFSZ back at their defaults).

A program cannot reach any of these: another uid (no signal, no ptrace, no
/proc/PID/mem; ptrace is refused by the filter anyway), and whatever it changes of the
interpreter (builtins, sys.modules, signals, rlimits, environment, cwd) is its own copy.

After a program ends, or when the supervisor says ``stop_program``, its sweeper (one per
program, forked ahead of need, with real and saved uid SWEEPER (argv: 1002, a uid no
process has) and effective uid the program's) kills every process of the program uid (kill(-1) until
/proc shows none alive: daemons included). Programs cannot signal it (its real and saved
uid are not theirs), and it signals nothing else (kill(2) needs the target's real or saved
uid to be one of its own). ``program_done`` goes out then (``clean``: no process of the
uid is left). Then the sweeper removes every file and directory the program uid owns
under /tmp, /dev/shm, /workspace and /dev/mqueue (through directory fds, never a path
that could lead elsewhere, however deep the tree) and every System V IPC object it owns,
while the next program's process is forked. If a sweep fails, this process exits (code
EXIT_UNCLEAN); the supervisor then clears the sandbox's processes, and the next warm
interpreter sweeps first and refuses to start (the same code) if it cannot.
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
import struct
import subprocess  # nosec B404  # runs the sandbox's compiler: fixed argv
import sys
import tempfile
import time
import traceback
import types
from typing import Any

from nsbox._guest.wire import PACKET, Wire, take_stdin

#: What programs commonly import, loaded once here (a program pays nothing for them).
PRELOAD = ("collections", "functools", "itertools", "math", "re", "typing")
TMP_DIRS = ("/tmp", "/dev/shm")  # nosec B108  # the sandbox's own tmpfs mounts
SWEPT = (*TMP_DIRS, "/workspace", "/dev/mqueue")
SWEEP_TIMEOUT = 2.0
#: How deep a swept tree is walked with directory fds held; deeper directories of the
#: program uid are moved up first.
MAX_DEPTH = 64
#: The compilers of the compiled languages, and the name of the source file for each.
COMPILERS = {"c": ("gcc", "-O2", "-std=gnu17", "-pipe"), "cpp": ("g++", "-O2", "-std=gnu++17", "-pipe")}
SOURCE_NAMES = {"python": "main.py", "bash": "main.sh", "c": "main.c", "cpp": "main.cpp"}
#: Compiled programs kept: at most this many, and this many bytes (the oldest go first).
MAX_BUILDS, MAX_BUILD_BYTES = 32, 256 << 20
PACKAGES = "/workspace/.packages"  # where install_packages puts them (pip --target)
#: Our exit code when what a program left could not be removed.
EXIT_UNCLEAN = 3
_ENDED = struct.Struct("!iiqq")  # pid, wait status, CPU microseconds, peak RSS in KiB
_PID = struct.Struct("!i")
_PR_SET_DUMPABLE, _PR_SET_PDEATHSIG, _PR_CAPBSET_DROP = 4, 1, 24
_CAP_SETGID, _CAP_SETUID, _CAP_SETPCAP = 6, 7, 8
_IPC_RMID = 0
_LIBC = ctypes.CDLL(None, use_errno=True)


def _prctl(*args: int) -> None:
    if _LIBC.prctl(*(ctypes.c_ulong(a) for a in args), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl{args}: {os.strerror(err)}")


# --- the handler ---------------------------------------------------------------------------
class Forks:
    """The handler's end of the fork server: ``program()`` is the next program's process
    (pid, its request socket, its compiler-output memfd), ``sweep(phase)`` runs a sweeper
    to its end; ``ended`` holds the children that ended, by pid (wait status, rusage)."""

    def __init__(self, uid: int, sweeper_uid: int) -> None:
        """Its children (a program's waiting process among them) are not killed with it:
        a parent-death signal to another uid needs CAP_KILL. The next warm interpreter's
        first sweep ends them."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            _serve_forks(theirs, uid, sweeper_uid)
        theirs.close()
        self.sock = ours
        self.ended: dict[int, tuple[int, float, int]] = {}

    def program(self) -> tuple[int, socket.socket, int]:
        self.sock.send(b"p")
        pid, fds = self._forked()
        if pid <= 0 or len(fds) != 2:
            sys.exit(EXIT_UNCLEAN)  # at the process limit after a sweep: something is left
        return pid, socket.socket(fileno=fds[0]), fds[1]

    def sweep(self) -> tuple[int, bool]:
        """Start a sweep: (the sweeper's pid, whether every process of the program uid is
        gone). Its end says whether the files and IPC objects went too (``finished``)."""
        self.sock.send(b"s")
        pid, fds = self._forked()
        if pid <= 0 or len(fds) != 1:
            return -1, False
        with open(fds[0], "rb", buffering=0) as progress:
            return pid, progress.read(1) == b"y"

    def finished(self, pid: int) -> bool:
        return pid > 0 and self.wait(pid)[0] == 0

    def wait(self, pid: int) -> tuple[int, float, int]:
        while pid not in self.ended:
            self.read()
        return self.ended.pop(pid)

    def read(self) -> tuple[int, list[int]] | None:
        """One report of the fork server: an end goes to ``ended``; the answer to a command
        (a pid and the fds with it) is returned."""
        data, fds, _, _ = socket.recv_fds(self.sock, 64, 2)
        if not data:
            raise SystemExit("the fork server is gone")
        if data[:1] == b"x":
            pid, status, cpu_us, rss_kib = _ENDED.unpack(data[1:])
            self.ended[pid] = (status, cpu_us / 1e6, rss_kib * 1024)
            return None
        return _PID.unpack(data[1:])[0], fds

    def _forked(self) -> tuple[int, list[int]]:
        while (answer := self.read()) is None:
            pass
        return answer


class Warm:
    def __init__(self, wire: Wire, forks: Forks) -> None:
        self.wire = wire
        self.forks = forks
        #: the process that waits for the next program: (pid, its socket, its memfd)
        self.next: tuple[int, socket.socket, int] | None = None
        self.builds: dict[str, int] = {}  #: compiled programs, sealed memfds, by source and files

    def serve(self) -> None:
        self.next = self.forks.program()
        while True:
            request, fds = self.wire.recv_with_fds()
            if request is None or request.get("type") != "program" or len(fds) != 2:
                for fd in fds:
                    os.close(fd)
                return
            try:
                clean = self.run(request, fds)
            finally:
                for fd in fds:
                    os.close(fd)
            if not clean:
                sys.exit(EXIT_UNCLEAN)

    def run(self, request: dict[str, Any], output: list[int]) -> bool:
        """One program (``output``: its stdout and stderr), compiled first if its language
        needs it and this source was not; False if a sweep failed."""
        number = request.get("number")
        while select.select([self.forks.sock], [], [], 0)[0]:  # news of the fork server first:
            self.forks.read()  # if it is gone, we exit before taking the program (a new one will)
        self.wire.send({"type": "program_started", "number": number})
        language = request.get("language", "")
        binary: int | None = None
        if language in COMPILERS:
            key = _build_key(request)
            binary = self.builds.get(key)
            if binary is None:
                built, compiled, sweeper = self.execute(dict(request, op="compile"), output, None)
                if built is None or request.get("compile_only"):
                    self.reply(number, "compile", compiled)
                    if built is not None and self.remember(key, built) not in self.builds.values():
                        os.close(built)  # too large to keep
                    return self.finish(sweeper)
                if not self.finish(sweeper):
                    return False
                binary = self.remember(key, built)
            elif request.get("compile_only"):
                self.reply(number, "compile", {"wait_status": 0, "clean": True})  # nothing to do: it is built
                return True
        _, done, sweeper = self.execute(dict(request, op="run"), output, binary)
        self.reply(number, "run", done)
        if binary is not None and binary not in self.builds.values():
            os.close(binary)  # too large to keep
        return self.finish(sweeper)

    def execute(
        self, request: dict[str, Any], output: list[int], binary: int | None
    ) -> tuple[int | None, dict[str, Any], int]:
        """Hand ``request`` (with ``output`` and ``binary`` to exec) to the waiting process,
        wait for its end or a stop, and have every process of the program uid killed.
        Returns (the compiler's output, if it compiled; its end; the sweeper, still
        removing what the program left)."""
        assert self.next is not None  # nosec B101  # forked after every sweep
        (pid, sock, memfd), self.next = self.next, None
        number = request.get("number")
        with contextlib.suppress(OSError), sock:  # it failed before: its end says how
            data = json.dumps(request).encode()
            socket.send_fds(sock, [data[:PACKET]], [*output, *([] if binary is None else [binary])])
            sock.sendall(data[PACKET:])
        poller = select.poll()
        poller.register(self.forks.sock.fileno(), select.POLLIN)
        poller.register(self.wire.sock.fileno(), select.POLLIN)
        stopped = False
        while pid not in self.forks.ended and not stopped:
            for fd, _ in poller.poll():
                if fd == self.forks.sock.fileno():
                    self.forks.read()
                else:
                    frame = self.wire.recv()  # None: the supervisor is gone (so are we, after the sweep)
                    stopped = frame is None or (frame.get("type") == "stop_program" and frame.get("number") == number)
        sweeper, killed = self.forks.sweep()  # the program too, when stopped
        status, cpu_s, rss = (
            self.forks.wait(pid) if killed or pid in self.forks.ended else (int(signal.SIGKILL), 0.0, 0)
        )
        if stopped:
            status = int(signal.SIGKILL)
        done = {"wait_status": status, "clean": killed, "cpu_s": cpu_s, "memory_peak_bytes": rss}
        if request.get("op") == "compile" and status == 0 and not stopped:
            return memfd, done, sweeper
        os.close(memfd)
        return None, done, sweeper

    def finish(self, sweeper: int) -> bool:
        """The next program's process forked while the sweeper removes what the last one
        left (it makes nothing of its own before its request, which waits for the sweep);
        False if something could not be removed."""
        self.next = self.forks.program()
        return self.forks.finished(sweeper)

    def remember(self, key: str, built: int) -> int:
        """Seal the compiler's output (no one can change it now) and keep it, unless it is
        too large; the oldest builds go past MAX_BUILDS or MAX_BUILD_BYTES."""
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(built, fcntl.F_ADD_SEALS, seals)
        size = os.fstat(built).st_size
        if size > MAX_BUILD_BYTES // 4:
            return built  # run once, not kept
        while self.builds and (
            len(self.builds) >= MAX_BUILDS
            or size + sum(os.fstat(fd).st_size for fd in self.builds.values()) > MAX_BUILD_BYTES
        ):
            os.close(self.builds.pop(next(iter(self.builds))))
        self.builds[key] = built
        return built

    def reply(self, number: Any, stage: str, done: dict[str, Any]) -> None:
        self.wire.send({"type": "program_done", "number": number, "stage": stage, **done})


def _build_key(request: dict[str, Any]) -> str:
    """What a build depends on: the language, the source and every file beside it."""
    digest = hashlib.sha256()
    files = sorted((request.get("files") or {}).items())
    for part in (request.get("language", ""), request.get("code", ""), *(x for item in files for x in item)):
        data = part.encode("utf-8", "surrogatepass")
        digest.update(_PID.pack(len(data)) + data)
    return digest.hexdigest()


# --- the fork server -------------------------------------------------------------------------
def _serve_forks(sock: socket.socket, uid: int, sweeper_uid: int) -> None:
    """Fork on command (``p``: a program's process; ``s``: a sweep), answer ``f`` + its pid
    (and a program's socket and memfd, or the read end of a sweeper's progress pipe; pid
    -1: the fork failed), and report each child's end (``x``). A sweeper is forked ahead of
    need and waits, as we are, for its start: a program that fills the process limit
    cannot keep it from starting. Never returns."""
    code = 2
    try:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        sweeper = _fork_sweeper(uid, sweeper_uid)
        while True:
            for fd, _ in poller.poll():
                if fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                    _report_ended(sock)
                    continue
                command = sock.recv(16)
                if not command:
                    code = 0
                    return
                if command == b"p":
                    _fork_program(sock, uid)
                elif command == b"s":
                    sweeper = sweeper or _fork_sweeper(uid, sweeper_uid)
                    if sweeper is None:
                        sock.send(b"f" + _PID.pack(-1))
                        continue
                    pid, start, progress = sweeper
                    os.write(start, b"s")
                    os.close(start)
                    socket.send_fds(sock, [b"f" + _PID.pack(pid)], [progress])
                    os.close(progress)
                    sweeper = _fork_sweeper(uid, sweeper_uid)
    finally:
        os._exit(code)


def _fork_program(sock: socket.socket, uid: int) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    memfd = os.memfd_create("program", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        pid = os.fork()
    except OSError:  # at the process limit
        sock.send(b"f" + _PID.pack(-1))
    else:
        if pid == 0:
            _program_main(theirs.fileno(), memfd, uid)
        socket.send_fds(sock, [b"f" + _PID.pack(pid)], [ours.fileno(), memfd])
    finally:
        ours.close()
        theirs.close()
        os.close(memfd)


def _fork_sweeper(uid: int, sweeper_uid: int) -> tuple[int, int, int] | None:
    """A sweeper that waits for its start on a pipe: (pid, the start pipe's write end, the
    read end of its progress pipe); None if the fork failed (the process limit: the next
    sweep tries again)."""
    start_r, start_w = os.pipe2(os.O_CLOEXEC)
    progress_r, progress_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError:
        for fd in (start_r, start_w, progress_r, progress_w):
            os.close(fd)
        return None
    if pid == 0:
        _sweeper_main(uid, sweeper_uid, start_r, progress_w)
    os.close(start_r)
    os.close(progress_w)
    return pid, start_w, progress_r


def _report_ended(sock: socket.socket) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        cpu_us = int((usage.ru_utime + usage.ru_stime) * 1e6)
        sock.send(b"x" + _ENDED.pack(pid, status, cpu_us, usage.ru_maxrss))


# --- a program's process ---------------------------------------------------------------------
def _program_main(sock_fd: int, memfd: int, uid: int) -> None:
    """Forked by the fork server: become the program, wait for it, compile or run it, exit
    with its status. Never returns. A failure before the request is reported with it (on
    the program's own stderr); no code of the request runs then."""
    try:
        os.dup2(sock_fd, 3, inheritable=False)  # the request's socket, closed before the program runs
        os.dup2(memfd, 4, inheritable=False)  # a compiler's output
        os.closerange(5, os.sysconf("SC_OPEN_MAX"))
        # The fork server's SIGCHLD wake-up, whose pipe was just closed: a program (or the
        # compiler's) child would otherwise print "Exception ignored ... wakeup fd" at its end.
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    except BaseException:
        os._exit(127)  # nothing of ours is safe to use: the handler sees it end
    try:
        failure: BaseException | None = None
        try:
            _become_program(uid)
        except BaseException as exc:
            failure = exc
        request, fds = _receive(3)
        for target, fd in zip((1, 2), fds[:2], strict=True):
            os.dup2(fd, target)
            os.close(fd)
        if failure is not None:
            _show(failure, failure.__traceback__)
            os._exit(127)
        workdir = tempfile.mkdtemp(prefix="program-", dir=TMP_DIRS[0])  # the sandbox's own /tmp
        os.chdir(workdir)
        os.environ["HOME"] = workdir
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
            if len(fds) > 2:
                os.execve(fds[2], ["main"], os.environ)  # nosec B606  # the program's own, compiled here
            os.execv("/bin/bash", ["bash", path])  # nosec B606  # running the program is the point
        os._exit(_run_python(code, path))
    except BaseException as exc:  # a child must never unwind into the fork server's loop
        _show(exc, exc.__traceback__)
        os._exit(127)


def _receive(fd: int) -> tuple[dict[str, Any], list[int]]:
    """The request from the handler, with the program's stdout, stderr and, compiled, the
    fd it is exec'd from."""
    sock = socket.socket(fileno=fd)
    data, fds, _, _ = socket.recv_fds(sock, PACKET, 3)
    chunks = [data]
    while chunk := sock.recv(PACKET):
        chunks.append(chunk)
    sock.close()
    if len(fds) < 2:
        raise OSError(22, "no stdout and stderr came with the request")
    for fd in fds:
        os.set_inheritable(fd, False)
    return json.loads(b"".join(chunks)), fds


def _compile(language: str, path: str, workdir: str) -> int:
    """Run the compiler; its output goes to fd 4 (the memfd the handler keeps)."""
    out = os.path.join(workdir, "main")
    argv = [*COMPILERS[language], "-o", out, path, "-lm"]
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False)  # nosec B603  # the compiler, fixed argv
    if done.returncode != 0:
        return done.returncode
    with open(out, "rb") as f:
        _write_all(4, f.read())
    return 0


def _become_program(uid: int) -> None:
    """The steps after the fds, in order; see the module's docstring.
    Signal dispositions stay as python3 sets them (SIGPIPE and SIGXFSZ ignored, SIGINT
    KeyboardInterrupt): a Python program sees what ``python3 main.py`` would."""
    os.setsid()
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
        compiled = compile(source, path, "exec")
        exec(compiled, module.__dict__)  # nosec B102  # inside the sandbox: running it is the point
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


# --- the sweeper -------------------------------------------------------------------------------
def _sweeper_main(uid: int, sweeper_uid: int, start: int, progress: int) -> None:
    """Wait (as the fork server is) for the start, take the sweeper's ids, kill every
    process of the program uid and say so on ``progress`` (``y``), then remove its files
    and IPC objects; exit 0 if everything went. Never returns."""
    code = 2
    try:
        for low, high in ((3, min(start, progress)), (min(start, progress) + 1, max(start, progress))):
            os.closerange(low, high)  # the fork server's socket and pipes: it alone answers for them
        os.closerange(max(start, progress) + 1, os.sysconf("SC_OPEN_MAX"))
        if os.read(start, 1):
            gc.disable()
            os.setresgid(sweeper_uid, uid, sweeper_uid)
            os.setresuid(sweeper_uid, uid, sweeper_uid)  # all nonzero: no capability is left
            killed = _kill_all(uid)
            os.write(progress, b"y" if killed else b"n")
            code = 0 if killed and _remove_all(uid) else 1
    finally:
        os._exit(code)


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


def _remove_all(uid: int) -> bool:
    clean = True
    for top in SWEPT:
        try:
            fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError:
            clean = False
            continue
        try:
            clean &= _sweep_tree(fd, uid)
        finally:
            os.close(fd)
    return _remove_ipc(uid) and clean


class _Dir:
    """A directory being swept: its fd, the names in it still to look at, whether the
    program uid owns it (then it goes too, once empty), and where a subtree too deep to
    walk is moved up to (the directory above the first one of the uid's)."""

    def __init__(self, fd: int, name: str, owned: bool, base: _Dir | None) -> None:
        self.fd = fd
        self.name = name
        self.names = os.listdir(fd)
        self.owned = owned
        self.base = base if owned else self


def _sweep_tree(top: int, uid: int) -> bool:
    """Everything under the directory ``top`` (an fd) that ``uid`` owns, removed; the other
    directories searched. By directory fds and names, without recursion: no path is
    built (so none grows too long or leads through a symlink), and a tree deeper than
    MAX_DEPTH is flattened by moving its deep directories up first. A directory of
    another uid that the program uid could enter but we cannot list makes it unclean (it
    could hide what a program left); one it could not enter is skipped."""
    clean = True
    stack = [_Dir(os.dup(top), "", owned=False, base=None)]
    moved = 0
    while stack:
        here = stack[-1]
        if not here.names:
            stack.pop()
            os.close(here.fd)
            if here.owned and stack:
                clean &= _gone(os.rmdir, here.name, stack[-1].fd)
            continue
        name = here.names.pop()
        try:
            info = os.stat(name, dir_fd=here.fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        is_dir = stat.S_ISDIR(info.st_mode)
        if info.st_uid == uid and not is_dir:
            clean &= _gone(os.unlink, name, here.fd)
            continue
        if not is_dir:
            continue
        owned = info.st_uid == uid
        if len(stack) >= MAX_DEPTH:
            base = here.base
            if owned and base is not None and base is not here:  # move it up, walk it from there
                moved += 1
                try:
                    os.rename(name, f".nsbox-deep-{moved}", src_dir_fd=here.fd, dst_dir_fd=base.fd)
                    base.names.append(f".nsbox-deep-{moved}")
                except OSError:
                    clean = False
            else:
                clean = False  # another uid's tree this deep: not walked
            continue
        child = _open_dir(here.fd, name, owned)
        if child is None:
            clean &= owned is False and not _enterable(here.fd, name)
            continue
        stack.append(_Dir(child, name, owned, here.base))
    return clean


def _open_dir(parent: int, name: str, owned: bool) -> int | None:
    """The directory ``name``, opened without following a symlink; one of the program
    uid's is made searchable first (a program may have left it mode 000)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=parent)
    except PermissionError:
        if not owned:
            return None
    except OSError:
        return None
    try:
        handle = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            os.chmod(f"/proc/self/fd/{handle}", 0o700)  # the inode we hold, not a path
        finally:
            os.close(handle)
        return os.open(name, flags, dir_fd=parent)
    except OSError:
        return None


def _enterable(parent: int, name: str) -> bool:
    """Whether the program uid can search the directory (we are it, effectively)."""
    return os.access(name, os.X_OK, dir_fd=parent, effective_ids=True, follow_symlinks=False)


def _gone(remove: Any, name: str, parent: int) -> bool:
    try:
        remove(name, dir_fd=parent)
    except FileNotFoundError:
        pass
    except OSError:
        return False
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
    with each page we hold), and a .pth that is not a regular file is not read (the
    workspace's user could leave a FIFO there)."""
    import site

    for directory in [*site.getsitepackages(), PACKAGES]:
        if not os.path.isdir(directory) or directory in sys.path:
            continue
        sys.path.append(directory)
        for name in sorted(os.listdir(directory)):
            if name.endswith(".pth"):
                sys.path.extend(_pth_directories(directory, name))


def _pth_directories(directory: str, name: str) -> list[str]:
    try:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        lines = f.read(1 << 20).decode("utf-8", "replace").splitlines()
    found = []
    for line in lines:
        path = os.path.join(directory, line.rstrip())
        if line.strip() and not line.startswith(("#", "import ", "import\t")) and os.path.isdir(path):
            found.append(path)
    return found


def main() -> None:
    program_uid, sweeper_uid = (int(arg) for arg in sys.argv[1:])
    wire = take_stdin()
    _prctl(_PR_SET_DUMPABLE, 0)
    for name in PRELOAD:  # before the site directories: only the standard library's
        __import__(name)
    _add_site_packages()
    gc.freeze()  # what is here now is never scanned again: a collection in a fork copies nothing
    forks = Forks(program_uid, sweeper_uid)  # now: no request has been in this memory yet
    sweeper, killed = forks.sweep()  # what an earlier warm interpreter could not remove
    if not (killed and forks.finished(sweeper)):
        sys.stderr.write("nsbox: what an earlier program left in this sandbox cannot be removed\n")
        sys.exit(EXIT_UNCLEAN)
    wire.send({"type": "warm_ready", "python": sys.version.split()[0]})
    Warm(wire, forks).serve()


if __name__ == "__main__":
    main()
