"""Ordinary programs keep working in a sandbox: threads, processes, event loops, sockets over
lo, compilers, package tools, databases, file and signal APIs, the usual command-line tools.

Each workload checks what it printed, not only its exit status, so a system call that the
sandbox (above all its default seccomp allowlist) refuses shows up as a wrong answer with the
payload's stderr. The sandbox sees the host's /usr: a workload whose program the host lacks is
skipped (with the program's name), whatever the mode; every other failure fails.

All traffic stays on the sandbox's own loopback.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import zlib
from typing import Any

import pytest

from tests.conftest import OWN_IDS, Outcome, SandboxRun, probe_argv

#: The payload's PATH (see README, "The payload's environment"): what it can find of the host's /usr.
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
HOST_PYTHON = "/usr/bin/python3"  # the payload's python3: the host's, not the interpreter running pytest


def need(*programs: str) -> None:
    """Skip when the host truly lacks a program: nothing but the host's /usr is there to run."""
    missing = [p for p in programs if shutil.which(p, path=SANDBOX_PATH) is None]
    if missing:
        pytest.skip(f"the host has no {', '.join(missing)} under /usr")


def host_python_has(*modules: str) -> bool:
    """Whether the host's python3 (the one the sandbox runs) can import every module."""
    if not os.access(HOST_PYTHON, os.X_OK):
        return False
    code = "import importlib.util, sys; sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))"
    return subprocess.run([HOST_PYTHON, "-I", "-c", code, *modules], capture_output=True).returncode == 0


def need_python(*modules: str) -> None:
    need("python3")
    if not host_python_has(*modules):
        pytest.skip(f"the host's python3 lacks {', '.join(modules)}")


def kernel_at_least(major: int, minor: int) -> bool:
    found = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return found is not None and (int(found[1]), int(found[2])) >= (major, minor)


def ok(out: Outcome) -> str:
    """The run's stdout, once it is sure the run succeeded; otherwise everything it said."""
    detail = f"{out.status} exit={out.exit_code} error={out.error}\nstdout: {out.stdout[-3000:]!r}\n"
    assert (out.status, out.exit_code) == ("ok", 0), detail + f"stderr: {out.stderr[-6000:].decode(errors='replace')}"
    return out.stdout.decode()


def ok_json(out: Outcome) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(ok(out))
    return found


def sections(text: str) -> dict[str, str]:
    """Splits a shell workload's output at its ``--- name`` lines."""
    found: dict[str, list[str]] = {}
    current = found.setdefault("", [])
    for line in text.splitlines():
        if line.startswith("--- "):
            current = found.setdefault(line[4:].strip(), [])
        else:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in found.items()}


def sh(script: str) -> list[str]:
    return ["sh", "-c", "set -eu\n" + script]


# --- Python: threads, processes, event loops ----------------------------------------------


def test_python_threads_share_work_and_are_joined(sandbox_run: SandboxRun) -> None:
    need_python("threading", "concurrent.futures")
    out = ok_json(
        sandbox_run(
            probe_argv(r"""
import hashlib, threading
from concurrent.futures import ThreadPoolExecutor
N = 8
barrier, lock = threading.Barrier(N + 1), threading.Lock()
results, names = {}, set()
def work(i):
    barrier.wait(timeout=10)
    digest = hashlib.sha256(b"%d" % i * 10000).hexdigest()
    with lock:
        results[i] = digest
        names.add(threading.current_thread().name)
threads = [threading.Thread(target=work, args=(i,), name=f"w{i}") for i in range(N)]
for t in threads:
    t.start()
out["tasks_at_barrier"] = len(os.listdir("/proc/self/task"))
barrier.wait(timeout=10)
for t in threads:
    t.join(timeout=10)
out["alive_after_join"] = sum(t.is_alive() for t in threads)
out["results"] = [results[i] for i in range(N)]
out["names"] = sorted(names)
with ThreadPoolExecutor(max_workers=4) as pool:
    out["pool_sum"] = sum(pool.map(lambda x: x * x, range(1000)))
cond, box, got = threading.Condition(), [], []
def producer():
    for i in range(200):
        with cond:
            box.append(i)
            cond.notify()
t = threading.Thread(target=producer)
t.start()
with cond:
    while len(got) < 200 and cond.wait_for(lambda: box, timeout=5):
        got += box
        box.clear()
t.join(timeout=10)
out["handoff_in_order"] = got == list(range(200))
out["threads_at_end"] = threading.active_count()
""")
        )
    )
    assert out == {
        "tasks_at_barrier": 9,  # the main thread and the 8 workers, all alive at once
        "alive_after_join": 0,
        "results": [hashlib.sha256(b"%d" % i * 10000).hexdigest() for i in range(8)],
        "names": [f"w{i}" for i in range(8)],
        "pool_sum": sum(x * x for x in range(1000)),
        "handoff_in_order": True,
        "threads_at_end": 1,
    }


def test_python_subprocess_runs_programs(api_run: SandboxRun) -> None:
    need_python("subprocess")
    need("ls", "echo", "tr", "cat", "true")
    out = ok_json(
        api_run(
            probe_argv(r"""
import subprocess, sys
open("a.txt", "w").close()
os.mkdir("d")
run = lambda *a, **k: subprocess.run(*a, capture_output=True, text=True, **k)
out["ls"] = run(["ls", "-1A", "/workspace"], check=True).stdout.split()
out["echo"] = run(["echo", "hi", "there"]).stdout
out["shell"] = run("echo $((6 * 7)) | tr 4 X", shell=True).stdout
out["stdin"] = run(["tr", "a-z", "A-Z"], input="piped in").stdout
out["rc"] = subprocess.run(["sh", "-c", "exit 7"]).returncode
out["missing"] = attempt(lambda: subprocess.run(["/no/such/program"]))
p = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
out["popen"] = p.communicate(b"round trip", timeout=10)[0].decode()
child_ppid = subprocess.check_output([sys.executable, "-c", "import os; print(os.getppid())"])
out["child_ppid_is_me"] = int(child_ppid) == os.getpid()
pid = os.posix_spawnp("true", ["true"], os.environ)
out["posix_spawn"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
try:
    subprocess.run(["sh", "-c", "exit 3"], check=True)
except subprocess.CalledProcessError as e:
    out["check"] = e.returncode
""")
        )
    )
    assert out == {
        "ls": ["a.txt", "d"],
        "echo": "hi there\n",
        "shell": "X2\n",
        "stdin": "PIPED IN",
        "rc": 7,
        "missing": "ENOENT",
        "popen": "round trip",
        "child_ppid_is_me": True,
        "posix_spawn": 0,
        "check": 3,
    }


@pytest.mark.usefixtures("no_leftovers")
def test_python_multiprocessing_pools_queues_and_shared_memory(api_run: SandboxRun) -> None:
    need_python("multiprocessing", "multiprocessing.shared_memory")
    out = ok_json(
        api_run(
            probe_argv(r"""
import math, time, multiprocessing as mp
from multiprocessing import shared_memory
def who(_):
    time.sleep(0.05)
    return os.getpid()
fork = mp.get_context("fork")
with fork.Pool(3) as pool:
    out["fork"] = pool.map(math.factorial, range(12))
    out["fork_workers"] = len(set(pool.map(who, range(6), chunksize=1)) - {os.getpid()})
for method in ("spawn", "forkserver"):  # fresh interpreters; forkserver passes fds over AF_UNIX
    with mp.get_context(method).Pool(2) as pool:
        out[method] = pool.map(math.factorial, range(12))
q = fork.Queue()
procs = [fork.Process(target=lambda i=i: q.put(i * 10)) for i in range(4)]
for p in procs:
    p.start()
out["queue"] = sorted(q.get(timeout=10) for _ in procs)
for p in procs:
    p.join(timeout=10)
out["exitcodes"] = [p.exitcode for p in procs]
counter = fork.Value("i", 0)  # a POSIX semaphore in /dev/shm guards it
def bump():
    for _ in range(100):
        with counter.get_lock():
            counter.value += 1
procs = [fork.Process(target=bump) for _ in range(4)]
for p in procs:
    p.start()
for p in procs:
    p.join(timeout=10)
out["counter"] = counter.value
shm = shared_memory.SharedMemory(create=True, size=4096)
shm.buf[:5] = b"hello"
def shout(name):
    other = shared_memory.SharedMemory(name=name)
    other.buf[:5] = bytes(other.buf[:5]).upper()
    other.close()
p = fork.Process(target=shout, args=(shm.name,))
p.start()
p.join(timeout=10)
out["shared_memory"] = bytes(shm.buf[:5]).decode()
shm.close()
shm.unlink()
with fork.Manager() as manager:  # a server process on an AF_UNIX socket in /tmp
    d = manager.dict()
    procs = [fork.Process(target=d.__setitem__, args=(i, i * i)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=10)
    out["manager"] = sorted(d.items())
out["children_left"] = len(mp.active_children())
""")
        )
    )
    factorials = [1, 1, 2, 6, 24, 120, 720, 5040, 40320, 362880, 3628800, 39916800]
    assert out.pop("fork_workers") >= 2, "the pool's work was not spread over its processes"
    assert out == {
        "fork": factorials,
        "spawn": factorials,
        "forkserver": factorials,
        "queue": [0, 10, 20, 30],
        "exitcodes": [0, 0, 0, 0],
        "counter": 400,
        "shared_memory": "HELLO",
        "manager": [[0, 0], [1, 1], [2, 4]],
        "children_left": 0,
    }


@pytest.mark.usefixtures("no_leftovers")
def test_python_asyncio_tasks_subprocess_and_tcp_server(api_run: SandboxRun) -> None:
    need_python("asyncio")
    out = ok_json(
        api_run(
            probe_argv(r"""
import asyncio
async def handle(reader, writer):
    line = await reader.readline()
    writer.write(line.upper())
    await writer.drain()
    writer.close()
    await writer.wait_closed()
async def client(port, i):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"hello %d\n" % i)
    await writer.drain()
    line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return line.decode().strip()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        out["tcp"] = await asyncio.gather(*(client(port, i) for i in range(5)))
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", "read x; echo got-$x; echo oops >&2; exit 3",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    so, se = await asyncio.wait_for(proc.communicate(b"ping\n"), 10)
    out["subprocess"] = [so.decode(), se.decode(), proc.returncode]
    shell = await asyncio.create_subprocess_shell("echo $((2 + 3))", stdout=asyncio.subprocess.PIPE)
    out["shell"] = (await shell.communicate())[0].decode()
    out["sleeps"] = await asyncio.gather(*(asyncio.sleep(0.01 * (5 - i), result=i) for i in range(5)))
    try:
        await asyncio.wait_for(asyncio.sleep(10), 0.05)
    except asyncio.TimeoutError:
        out["wait_for"] = "timed out"
    queue, seen = asyncio.Queue(), []
    async def consumer():
        while (item := await queue.get()) is not None:
            seen.append(item)
    task = asyncio.create_task(consumer())
    for i in range(10):
        await queue.put(i)
    await queue.put(None)
    await task
    out["queue"] = seen
    out["executor"] = await asyncio.get_running_loop().run_in_executor(None, sum, range(101))
asyncio.run(main())
""")
        )
    )
    assert out == {
        "tcp": [f"HELLO {i}" for i in range(5)],
        "subprocess": ["got-ping\n", "oops\n", 3],
        "shell": "5\n",
        "sleeps": [0, 1, 2, 3, 4],
        "wait_for": "timed out",
        "queue": list(range(10)),
        "executor": 5050,
    }


# --- Shell and command-line tools ----------------------------------------------------------


def test_sh_pipelines_and_shell_features(sandbox_run: SandboxRun) -> None:
    need("sh", "printf", "sort", "uniq", "awk", "paste", "tr", "wc", "cat")
    out = sandbox_run(
        sh(r"""
printf 'b\na\nc\na\nb\na\n' | sort | uniq -c | sort -rn | awk '{print $2 "=" $1}' | paste -sd, -
echo "--- subst"
n=$(printf 'x\ny\nz\n' | wc -l); echo "lines=$n sum=$((n * 2 + 1))"
echo "--- heredoc"
cat <<EOF | tr a-z A-Z
here $n
EOF
echo "--- loop"
i=0; printf '3\n4\n5\n' > nums; while read -r v; do i=$((i + v)); done < nums; echo "total=$i"
echo "--- subshell"
(cd /tmp && pwd); pwd
echo "--- background"
(sleep 0.1; echo late) & (echo early) ; wait
echo "--- status"
if false | true; then echo "pipe-status=$?"; fi
sh -c 'exit 4' || echo "child-exit=$?"
echo "--- trap"
sh -c 'trap "echo trapped" EXIT; echo body'
""")
    )
    assert sections(ok(out)) == {
        "": "a=3,b=2,c=1",
        "subst": "lines=3 sum=7",
        "heredoc": "HERE 3",
        "loop": "total=12",
        "subshell": "/tmp\n/workspace",
        "background": "early\nlate",
        "status": "pipe-status=0\nchild-exit=4",
        "trap": "body\ntrapped",
    }


def test_coreutils_files_archives_and_dates(sandbox_run: SandboxRun) -> None:
    tools = "mkdir cp mv ln find sort sha256sum cut tar gzip diff date stat touch chmod dd wc df tail awk id"
    need(*tools.split(), "readlink", "realpath", "seq", "xargs", "rm", "du", "head", "uname", "nproc", "mktemp")
    started = time.time()
    out = sandbox_run(
        sh(r"""
mkdir -p a/b/c
printf 'hello\n' > a/b/c/f.txt
cp a/b/c/f.txt a/copy.txt
cp -a a a2
mv a/copy.txt a/moved.txt
ln -s moved.txt a/link
echo "--- find"
find a -type f | sort
find a -type l
echo "--- sha256"
sha256sum a/moved.txt | cut -d' ' -f1
echo "--- tar"
tar -czf a.tgz a
mkdir x
tar -xzf a.tgz -C x
diff -r a x/a && echo same
tar -tzf a.tgz | sort | paste -sd' ' -
echo "--- date"
date -u -d @86400 +%F
date +%s
echo "--- stat"
chmod 640 a/moved.txt
touch -d '2001-02-03 04:05:06 UTC' a/moved.txt
stat -c '%s %a %F %Y' a/moved.txt
echo "--- links"
readlink a/link
realpath a/link
echo "--- dd"
dd if=/dev/zero of=zeros bs=1024 count=64 2>/dev/null
wc -c < zeros
du -k zeros | cut -f1
echo "--- df"
df -k /workspace | tail -1 | awk '{print $2}'
echo "--- misc"
seq 1 6 | xargs -n3 echo
id -un
uname -s
test "$(nproc)" -ge 1 && echo nproc-ok
t=$(mktemp); test -f "$t" && case "$t" in /tmp/*) echo mktemp-in-tmp;; esac; rm "$t"
head -c 5 a/b/c/f.txt; echo
rm -rf a2 x a.tgz && test ! -e a2 && echo removed
""")
    )
    got = sections(ok(out))
    now = int(got["date"].splitlines()[1])
    assert abs(now - started) < 60, f"the sandbox's clock says {now}, the host's {started}"
    assert got == {
        "": "",
        "find": "a/b/c/f.txt\na/moved.txt\na/link",
        "sha256": hashlib.sha256(b"hello\n").hexdigest(),
        "tar": "same\na/ a/b/ a/b/c/ a/b/c/f.txt a/link a/moved.txt",
        "date": f"1970-01-02\n{now}",
        "stat": "6 640 regular file 981173106",
        "links": "moved.txt\n/workspace/a/moved.txt",
        "dd": "65536\n64",
        "df": str(256 * 1024),  # the default workspace_size, 256M
        "misc": "1 2 3\n4 5 6\nsandbox\nLinux\nnproc-ok\nmktemp-in-tmp\nhello\nremoved",
    }


def test_gcc_compiles_and_runs_a_c_program(api_run: SandboxRun) -> None:
    need("gcc", "sh", "cat")
    source = rb"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long sums[4];

static void *work(void *arg) {
    long i = (long)arg, s = 0;
    for (long k = 0; k <= 1000 * (i + 1); k++) s += k;
    sums[i] = s;
    return NULL;
}

int main(void) {
    pthread_t t[4];
    for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, work, (void *)i);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    printf("threads %ld %ld %ld %ld\n", sums[0], sums[1], sums[2], sums[3]);

    pid_t pid = fork();
    if (pid == 0) _exit(42);
    int status;
    waitpid(pid, &status, 0);
    printf("child exited %d\n", WEXITSTATUS(status));

    char *page = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    strcpy(page, "mapped");
    printf("mmap %s\n", page);
    munmap(page, 1 << 20);

    struct timespec a, b, pause = {0, 20 * 1000 * 1000};
    clock_gettime(CLOCK_MONOTONIC, &a);
    nanosleep(&pause, NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    long ms = (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
    printf("slept %s\n", ms >= 20 ? "enough" : "too little");

    char *heap = malloc(64 << 20);  /* large enough for malloc to mmap it */
    memset(heap, 1, 64 << 20);
    printf("heap %d\n", heap[(64 << 20) - 1]);
    free(heap);
    return 0;
}
"""
    out = api_run(
        sh(r"""
cat > prog.c
gcc -O2 -Wall -Werror -pthread -o prog prog.c
./prog
echo "--- static"
gcc -O2 -static -pthread -o prog-static prog.c 2>&1 && ./prog-static | head -1 || echo "no static libc"
echo "--- version"
gcc -dumpversion | grep -qE '^[0-9]+' && echo version-ok
ls /tmp | wc -l
"""),
        input=source,
    )
    assert sections(ok(out)) == {
        "": "threads 500500 2001000 4501500 8002000\nchild exited 42\nmmap mapped\nslept enough\nheap 1",
        "static": "threads 500500 2001000 4501500 8002000",
        "version": "version-ok\n0",  # gcc cleaned its temporary files out of /tmp
    }


def test_python_venv_is_created_and_its_python_runs(api_run: SandboxRun) -> None:
    need_python("venv")
    with_pip = host_python_has("ensurepip")
    out = api_run(
        sh(f"""
python3 -m venv {"" if with_pip else "--without-pip"} /workspace/v
/workspace/v/bin/python -c 'import sys; print(sys.prefix, sys.base_prefix, sys.prefix != sys.base_prefix)'
echo "--- pip"
if [ -x /workspace/v/bin/pip ]; then /workspace/v/bin/python -m pip --version --disable-pip-version-check; fi
echo "--- import"
/workspace/v/bin/python -c 'import json, sqlite3, ssl; print("stdlib ok")'
"""),
        timeout=60,
    )
    got = sections(ok(out))
    assert got[""] == "/workspace/v /usr True"
    assert got["import"] == "stdlib ok"
    if with_pip:  # ensurepip installed pip from the wheels it carries, offline, into the venv
        pattern = r"pip \S+ from /workspace/v/lib/python3\.\d+/site-packages/pip \(python 3\.\d+\)"
        assert re.fullmatch(pattern, got["pip"]), got["pip"]
    else:
        assert got["pip"] == ""


def host_pip_command() -> list[str] | None:
    """How the sandbox can run a pip of the host's /usr: python3 -m pip, else a pip script."""
    if host_python_has("pip"):
        return ["python3", "-m", "pip"]
    for name in ("pip3", "pip"):
        found = shutil.which(name, path="/usr/local/bin:/usr/bin")  # not a pyenv shim outside /usr
        if found:
            return [found]
    return None


def test_pip_reports_its_version_and_lists_packages(api_run: SandboxRun) -> None:
    need("python3")
    pip = host_pip_command()
    if pip is None:
        pytest.skip("the host has no pip under /usr (neither python3 -m pip nor a pip script)")
    out = ok(api_run([*pip, "--version"]))
    assert re.fullmatch(r"pip \d+\S* from /usr/\S+/pip \(python 3\.\d+\)\n", out), out
    listed = json.loads(ok(api_run([*pip, "list", "--format=json", "--disable-pip-version-check"])))
    assert "pip" in {p["name"].lower() for p in listed}


def test_sqlite_database_in_the_workspace(api_run: SandboxRun) -> None:
    need_python("sqlite3")
    cli = shutil.which("sqlite3", path=SANDBOX_PATH) is not None
    out = ok_json(
        api_run(
            probe_argv(rf"""
import sqlite3, subprocess, threading
db = sqlite3.connect("/workspace/t.db")
out["journal"] = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]  # mmap'ed -shm file, fcntl locks
db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, n REAL)")
db.executemany("INSERT INTO t (name, n) VALUES (?, ?)", [(f"n{{i}}", i * 1.5) for i in range(100)])
db.commit()
out["count_sum"] = list(db.execute("SELECT count(*), sum(n) FROM t").fetchone())
out["like"] = [r[0] for r in db.execute("SELECT name FROM t WHERE name LIKE 'n9%' ORDER BY id LIMIT 3")]
def other_connection():
    out["from_thread"] = sqlite3.connect("/workspace/t.db").execute("SELECT max(id) FROM t").fetchone()[0]
t = threading.Thread(target=other_connection)
t.start()
t.join()
db.execute("CREATE INDEX t_name ON t(name)")
db.execute("UPDATE t SET n = -1 WHERE id <= 10")
db.commit()
out["updated"] = db.execute("SELECT count(*) FROM t WHERE n < 0").fetchone()[0]
out["integrity"] = db.execute("PRAGMA integrity_check").fetchone()[0]
if {cli!r}:
    query = "SELECT count(*) FROM t WHERE n >= 0"
    r = subprocess.run(["sqlite3", "/workspace/t.db", query], capture_output=True, text=True)
    out["cli"] = r.stdout.strip() or r.stderr
db.close()
out["files"] = sorted(f for f in os.listdir("/workspace") if f.startswith("t.db"))
""")
        )
    )
    expected = {
        "journal": "wal",
        "count_sum": [100, sum(i * 1.5 for i in range(100))],
        "like": ["n9", "n90", "n91"],
        "from_thread": 100,
        "updated": 10,
        "integrity": "ok",
        "files": ["t.db"],  # the last connection to close checkpoints and removes -wal and -shm
    }
    if cli:
        expected["cli"] = "90"
    assert out == expected


# --- Sockets over loopback -----------------------------------------------------------------


def test_tcp_server_and_clients_over_loopback(api_run: SandboxRun) -> None:
    need_python("selectors")
    ipv6 = os.path.exists("/proc/net/if_inet6")  # the kernel has IPv6: the sandbox's lo gets ::1
    out = ok_json(
        api_run(
            probe_argv(r"""
import errno, hashlib, selectors, threading
payload = os.urandom(1 << 20)
with open("payload.bin", "wb") as f:
    f.write(payload)
srv = socket.create_server(("127.0.0.1", 0), backlog=8)
port = srv.getsockname()[1]
def serve(n):
    for _ in range(n):
        conn, _ = srv.accept()
        with conn:
            h = hashlib.sha256()
            while chunk := conn.recv(65536):
                h.update(chunk)
            conn.sendall(h.hexdigest().encode())
server = threading.Thread(target=serve, args=(3,))
server.start()
def finish(c):
    c.shutdown(socket.SHUT_WR)
    with c.makefile("rb") as f:
        return f.read().decode()
replies = []
with socket.create_connection(("127.0.0.1", port), timeout=10) as c:  # sendall
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(payload)
    replies.append(finish(c))
with socket.create_connection(("127.0.0.1", port), timeout=10) as c, open("payload.bin", "rb") as f:
    out["sendfile_bytes"] = c.sendfile(f)  # os.sendfile
    replies.append(finish(c))
sel = selectors.DefaultSelector()
out["selector"] = type(sel).__name__
c = socket.socket()
c.setblocking(False)
out["connect_ex"] = errno.errorcode.get(c.connect_ex(("127.0.0.1", port)), "0")
sel.register(c, selectors.EVENT_WRITE)
out["writable"] = len(sel.select(timeout=5))
out["so_error"] = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
sel.unregister(c)
c.setblocking(True)
c.sendall(payload)
replies.append(finish(c))
c.close()
server.join(timeout=10)
out["replies_match"] = replies == [hashlib.sha256(payload).hexdigest()] * 3
srv.close()
out["refused"] = attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=2))
if os.path.exists("/proc/net/if_inet6") and "0" * 31 + "1" in open("/proc/net/if_inet6").read():
    s6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
    c6 = socket.create_connection(("::1", s6.getsockname()[1]), timeout=5)
    conn6, _ = s6.accept()
    c6.sendall(b"six")
    out["ipv6"] = conn6.recv(3).decode()
else:
    out["ipv6"] = "no ::1 on lo"
""")
        )
    )
    assert out == {
        "sendfile_bytes": 1 << 20,
        "selector": "EpollSelector",
        "connect_ex": "EINPROGRESS",
        "writable": 1,
        "so_error": 0,
        "replies_match": True,
        "refused": "ECONNREFUSED",
        "ipv6": "six" if ipv6 else "no ::1 on lo",
    }


def test_udp_datagrams_over_loopback(api_run: SandboxRun) -> None:
    need("python3")
    out = ok_json(
        api_run(
            probe_argv(r"""
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
a.bind(("127.0.0.1", 0))
b.bind(("127.0.0.1", 0))
b.settimeout(5)
for i in range(20):
    a.sendto(b"dgram %d" % i, b.getsockname())
got, peers = [], set()
for _ in range(20):
    data, peer = b.recvfrom(100)
    got.append(data.decode())
    peers.add(peer)
out["in_order"] = got == ["dgram %d" % i for i in range(20)]
out["peer_is_a"] = peers == {a.getsockname()}
big = os.urandom(60000)
a.sendto(big, b.getsockname())
out["big"] = b.recv(65535) == big
a.connect(b.getsockname())
a.send(b"connected")
out["connected"] = b.recv(100).decode()
b.sendmsg([b"scatter ", b"gather"], [], 0, a.getsockname())
a.settimeout(5)
data, ancillary, flags, addr = a.recvmsg(100)
out["recvmsg"] = [data.decode(), addr == b.getsockname()]
b.settimeout(0.05)
try:
    b.recv(10)
    out["empty"] = "data?"
except TimeoutError:
    out["empty"] = "timeout"
""")
        )
    )
    assert out == {
        "in_order": True,
        "peer_is_a": True,
        "big": True,
        "connected": "connected",
        "recvmsg": ["scatter gather", True],
        "empty": "timeout",
    }


def test_unix_sockets_pairs_servers_and_fd_passing(api_run: SandboxRun) -> None:
    need("python3")
    out = ok_json(
        api_run(
            probe_argv(r"""
import stat, struct, threading
x, y = socket.socketpair()
x.sendall(b"pair")
out["pair"] = y.recv(4).decode()
path = "/workspace/app.sock"
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen()
def serve():
    conn, _ = srv.accept()
    with conn:
        pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        conn.sendall(conn.recv(100)[::-1] + b" uid=%d same_pid=%d" % (uid, pid == os.getpid()))
t = threading.Thread(target=serve)
t.start()
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
    c.connect(path)
    c.sendall(b"olleh")
    out["server"] = c.recv(100).decode()
t.join(timeout=10)
out["is_socket"] = stat.S_ISSOCK(os.stat(path).st_mode)
srv.close()
os.unlink(path)
abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
abstract.bind("\0nsbox-workload")
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"abstract", "\0nsbox-workload")
out["abstract"] = abstract.recv(100).decode()
s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s1.send(b"one")
s1.send(b"two")
out["seqpacket"] = [s2.recv(100).decode(), s2.recv(100).decode()]
r, w = os.pipe()
socket.send_fds(x, [b"fd"], [w])
msg, fds, flags, addr = socket.recv_fds(y, 10, 1)
os.write(fds[0], b"through a passed fd")
out["fd_passing"] = [msg.decode(), os.read(r, 100).decode()]
""")
        )
    )
    assert out == {
        "pair": "pair",
        "server": "hello uid=1000 same_pid=1",
        "is_socket": True,
        "abstract": "abstract",
        "seqpacket": ["one", "two"],
        "fd_passing": ["fd", "through a passed fd"],
    }


def test_names_resolve_locally(sandbox_run: SandboxRun) -> None:
    need("python3")
    out = ok_json(
        sandbox_run(
            probe_argv(r"""
import grp, pwd
out["hostname"] = socket.gethostname()
out["nodename"] = os.uname().nodename
out["localhost"] = sorted({ai[4][0] for ai in socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)})
out["localhost_v4"] = socket.gethostbyname("localhost")
out["own_name"] = socket.gethostbyname(socket.gethostname())
out["numeric"] = socket.getaddrinfo("127.0.0.1", "http", socket.AF_INET, socket.SOCK_STREAM)[0][4]
out["services"] = [socket.getservbyname("https", "tcp"), socket.getprotobyname("udp")]
out["nameinfo"] = list(socket.getnameinfo(("127.0.0.1", 22), 0))
out["user"] = [pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name, pwd.getpwnam("sandbox").pw_dir]
try:  # no resolver: the lookup fails (at once), it does not reach any network
    socket.getaddrinfo("no-such-host.invalid", 80)
    out["unknown"] = "resolved?"
except socket.gaierror:
    out["unknown"] = "gaierror"
""")
        )
    )
    assert out == {
        "hostname": "nsbox",
        "nodename": "nsbox",
        "localhost": ["127.0.0.1", "::1"],  # both are in the generated /etc/hosts
        "localhost_v4": "127.0.0.1",
        "own_name": "127.0.1.1",
        "numeric": ["127.0.0.1", 80],
        "services": [443, 17],
        "nameinfo": ["localhost", "ssh"],
        "user": ["sandbox", "sandbox", "/workspace"],
        "unknown": "gaierror",
    }


# --- Files, IPC, signals, /proc --------------------------------------------------------------


def test_file_io_mmap_fsync_replace_and_locks(api_run: SandboxRun) -> None:
    need("python3")
    out = ok_json(
        api_run(
            probe_argv(r"""
import fcntl, mmap, shutil
with open("cfg", "w") as f:
    f.write("version=1\n")
with open("cfg.tmp", "w") as f:
    f.write("version=2\n")
    f.flush()
    os.fsync(f.fileno())
    os.fdatasync(f.fileno())
os.replace("cfg.tmp", "cfg")
dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
os.fsync(dfd)
os.close(dfd)
out["replace"] = [open("cfg").read(), os.path.exists("cfg.tmp")]
with open("data.bin", "wb") as f:
    f.truncate(1 << 16)
with open("data.bin", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
    m[:5] = b"hello"
    m[-5:] = b"world"
    m.flush()
with open("data.bin", "rb") as f:
    data = f.read()
out["mmap"] = [data[:5].decode(), data[-5:].decode(), len(data)]
fd = os.open("pp", os.O_RDWR | os.O_CREAT, 0o600)
os.pwrite(fd, b"XYZ", 10)
out["pread"] = [os.pread(fd, 3, 10).decode(), os.fstat(fd).st_size]
os.posix_fallocate(fd, 0, 8192)
out["fallocate"] = os.fstat(fd).st_size
os.ftruncate(fd, 100)
out["ftruncate"] = os.fstat(fd).st_size
os.close(fd)
shutil.copyfile("data.bin", "copy.bin")
src, dst = os.open("data.bin", os.O_RDONLY), os.open("cfr.bin", os.O_WRONLY | os.O_CREAT, 0o600)
copied = 0
while n := os.copy_file_range(src, dst, 1 << 16):
    copied += n
os.close(src)
os.close(dst)
out["copies"] = [open("copy.bin", "rb").read() == data, open("cfr.bin", "rb").read() == data, copied]
os.symlink("cfg", "cfg.link")
os.link("cfg", "cfg.hard")
os.chmod("cfg", 0o600)
os.utime("cfg", ns=(1_000_000_000_123, 2_000_000_000_456))
st = os.stat("cfg")
out["meta"] = [os.readlink("cfg.link"), st.st_nlink, oct(st.st_mode & 0o777), st.st_mtime_ns]
vfs = os.statvfs("/workspace")
out["statvfs_bytes"] = vfs.f_blocks * vfs.f_frsize
def contend():  # a second process asks for both kinds of lock, without waiting
    pid = os.fork()
    if pid == 0:
        codes = []
        with open("lockfile", "w") as g:
            for how in (fcntl.flock, fcntl.lockf):
                try:
                    how(g, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    codes.append("locked")
                except OSError as e:
                    codes.append("busy" if e.errno in (errno.EAGAIN, errno.EACCES) else errno.errorcode[e.errno])
        with open("child", "w") as c:
            c.write(",".join(codes))
        os._exit(0)
    os.waitpid(pid, 0)
    return open("child").read()
lock = open("lockfile", "w")
fcntl.flock(lock, fcntl.LOCK_EX)
fcntl.lockf(lock, fcntl.LOCK_EX)
out["held"] = contend()
fcntl.flock(lock, fcntl.LOCK_UN)
fcntl.lockf(lock, fcntl.LOCK_UN)
out["released"] = contend()
os.makedirs("deep/er/est")
os.rename("deep", "moved")
out["tree"] = sorted(os.path.relpath(os.path.join(d, n)) for d, ds, fs in os.walk("moved") for n in ds + fs)
shutil.rmtree("moved")
out["scandir"] = sorted(e.name for e in os.scandir(".") if e.is_file(follow_symlinks=False))
""")
        )
    )
    assert out == {
        "replace": ["version=2\n", False],
        "mmap": ["hello", "world", 1 << 16],
        "pread": ["XYZ", 13],
        "fallocate": 8192,
        "ftruncate": 100,
        "copies": [True, True, 1 << 16],
        "meta": ["cfg", 2, "0o600", 2_000_000_000_456],
        "statvfs_bytes": 256 << 20,
        "held": "busy,busy",
        "released": "locked,locked",
        "tree": ["moved/er", "moved/er/est"],
        "scandir": ["cfg", "cfg.hard", "cfr.bin", "child", "copy.bin", "data.bin", "lockfile", "pp"],
    }


def host_links_o_tmpfile_through_proc() -> str:
    """How this host's kernel answers linkat("/proc/self/fd/N", AT_SYMLINK_FOLLOW) for an O_TMPFILE fd."""
    with tempfile.TemporaryDirectory() as d:
        fd = os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o600)
        try:
            os.link(f"/proc/self/fd/{fd}", os.path.join(d, "named"), follow_symlinks=True)
            return "ok"
        except OSError as e:
            return errno.errorcode.get(e.errno or 0, str(e.errno))
        finally:
            os.close(fd)


def test_linux_fd_apis_inotify_eventfd_memfd_splice_pidfd(api_run: SandboxRun) -> None:
    need("python3", "sleep")
    via_proc = host_links_o_tmpfile_through_proc()
    via_fd = "ok" if kernel_at_least(6, 10) else "ENOENT"  # linkat(fd, "", AT_EMPTY_PATH) without a capability
    out = ok_json(
        api_run(
            probe_argv(r"""
import select, signal, struct, subprocess
IN_CLOSE_WRITE, IN_CREATE, IN_NONBLOCK = 0x8, 0x100, 0o4000
os.mkdir("watched")
ifd = libc.inotify_init1(IN_NONBLOCK)
if ifd < 0:
    raise OSError(ctypes.get_errno(), "inotify_init1")
if libc.inotify_add_watch(ifd, b"watched", IN_CREATE | IN_CLOSE_WRITE) < 0:
    raise OSError(ctypes.get_errno(), "inotify_add_watch")
with open("watched/new.txt", "w") as f:
    f.write("x")
events = []
while len(events) < 2 and select.select([ifd], [], [], 2)[0]:
    buf, off = os.read(ifd, 4096), 0
    while off < len(buf):
        wd, mask, cookie, length = struct.unpack_from("iIII", buf, off)
        name = buf[off + 16 : off + 16 + length].rstrip(b"\0").decode()
        events.append(["create" if mask & IN_CREATE else "close_write" if mask & IN_CLOSE_WRITE else hex(mask), name])
        off += 16 + length
out["inotify"] = events
efd = os.eventfd(0)
os.eventfd_write(efd, 3)
os.eventfd_write(efd, 4)
out["eventfd"] = os.eventfd_read(efd)
mfd = os.memfd_create("nsbox-test", os.MFD_CLOEXEC)
os.write(mfd, b"in memory")
out["memfd"] = [os.pread(mfd, 100, 0).decode(), os.readlink(f"/proc/self/fd/{mfd}").startswith("/memfd:nsbox-test")]
r, w = os.pipe2(os.O_CLOEXEC)
os.write(w, b"spliced")
dst = os.open("spliced.txt", os.O_WRONLY | os.O_CREAT, 0o600)
out["splice"] = [os.splice(r, dst, 7), open("spliced.txt").read()]
fd = os.open(".", os.O_TMPFILE | os.O_RDWR, 0o600)
os.write(fd, b"was anonymous")
out["o_tmpfile"] = [os.pread(fd, 100, 0).decode(), os.listdir("watched")]
out["o_tmpfile_link_proc"] = attempt(lambda: os.link(f"/proc/self/fd/{fd}", "named1", follow_symlinks=True))
def link_empty_path():
    if libc.linkat(fd, b"", -100, b"named2", 0x1000) != 0:  # AT_FDCWD, AT_EMPTY_PATH
        raise OSError(ctypes.get_errno(), "linkat")
out["o_tmpfile_link_fd"] = attempt(link_empty_path)
out["named"] = [n for n in ("named1", "named2") if os.path.exists(n) and open(n).read() == "was anonymous"]
out["getrandom"] = len(os.getrandom(32))
p = subprocess.Popen(["sleep", "0.05"])
pfd = os.pidfd_open(p.pid)
out["pidfd_readable_on_exit"] = bool(select.select([pfd], [], [], 5)[0])
p.wait()
p = subprocess.Popen(["sleep", "30"])
signal.pidfd_send_signal(os.pidfd_open(p.pid), signal.SIGTERM)
out["pidfd_signal"] = p.wait(timeout=5)
os.closerange(3, 1024)  # close_range(2) where the kernel has it
""")
        )
    )
    assert out == {
        "inotify": [["create", "new.txt"], ["close_write", "new.txt"]],
        "eventfd": 7,
        "memfd": ["in memory", True],
        "splice": [7, "spliced"],
        "o_tmpfile": ["was anonymous", ["new.txt"]],
        "o_tmpfile_link_proc": via_proc,  # EXDEV on some kernels (seen on 6.18) on the host too: not the sandbox
        "o_tmpfile_link_fd": via_fd,
        "named": [n for n, how in (("named1", via_proc), ("named2", via_fd)) if how == "ok"],
        "getrandom": 32,
        "pidfd_readable_on_exit": True,
        "pidfd_signal": -15,
    }


def test_sysv_and_posix_ipc(api_run: SandboxRun) -> None:
    need("python3")
    ipcs = shutil.which("ipcs", path=SANDBOX_PATH) is not None
    out = ok_json(
        api_run(
            probe_argv(rf"""
import subprocess
c = ctypes
IPC_PRIVATE, IPC_CREAT, IPC_RMID, GETVAL = 0, 0o1000, 0, 12
def check(value, name):
    if value == -1:
        raise OSError(c.get_errno(), name)
    return value
libc.shmat.restype = c.c_void_p
libc.shmat.argtypes = [c.c_int, c.c_void_p, c.c_int]
libc.shmdt.argtypes = [c.c_void_p]
shmid = check(libc.shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0o600), "shmget")
addr = libc.shmat(shmid, None, 0)
c.memmove(addr, b"sysv", 4)
out["shm"] = c.string_at(addr, 4).decode()
if {ipcs!r}:
    out["ipcs_lists_it"] = str(shmid) in subprocess.run(["ipcs", "-m"], capture_output=True, text=True).stdout
check(libc.shmdt(addr), "shmdt")
check(libc.shmctl(shmid, IPC_RMID, None), "shmctl")
class sembuf(c.Structure):
    _fields_ = [("sem_num", c.c_ushort), ("sem_op", c.c_short), ("sem_flg", c.c_short)]
semid = check(libc.semget(IPC_PRIVATE, 1, IPC_CREAT | 0o600), "semget")
check(libc.semop(semid, c.byref(sembuf(0, 2, 0)), 1), "semop")
check(libc.semop(semid, c.byref(sembuf(0, -1, 0)), 1), "semop")
out["sem"] = check(libc.semctl(semid, 0, GETVAL), "semctl")
check(libc.semctl(semid, 0, IPC_RMID), "semctl")
class msgbuf(c.Structure):
    _fields_ = [("mtype", c.c_long), ("mtext", c.c_char * 64)]
libc.msgrcv.restype = c.c_ssize_t
libc.msgrcv.argtypes = [c.c_int, c.c_void_p, c.c_size_t, c.c_long, c.c_int]
msqid = check(libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600), "msgget")
check(libc.msgsnd(msqid, c.byref(msgbuf(1, b"queued")), 6, 0), "msgsnd")
received = msgbuf()
n = check(libc.msgrcv(msqid, c.byref(received), 64, 0, 0), "msgrcv")
out["msg"] = received.mtext[:n].decode()
check(libc.msgctl(msqid, IPC_RMID, None), "msgctl")
class mq_attr(c.Structure):
    _fields_ = [("mq_flags", c.c_long), ("mq_maxmsg", c.c_long), ("mq_msgsize", c.c_long), ("mq_curmsgs", c.c_long),
                ("pad", c.c_long * 4)]
libc.mq_receive.restype = c.c_ssize_t
libc.mq_receive.argtypes = [c.c_int, c.c_char_p, c.c_size_t, c.c_void_p]
mqd = check(libc.mq_open(b"/nsbox-workload", os.O_CREAT | os.O_RDWR, 0o600, c.byref(mq_attr(0, 4, 64))), "mq_open")
check(libc.mq_send(mqd, b"posix mq", 8, 1), "mq_send")
buf = c.create_string_buffer(64)
n = check(libc.mq_receive(mqd, buf, 64, None), "mq_receive")
out["mq"] = buf.raw[:n].decode()
check(libc.mq_close(mqd), "mq_close")
check(libc.mq_unlink(b"/nsbox-workload"), "mq_unlink")
""")
        )
    )
    expected = {"shm": "sysv", "sem": 1, "msg": "queued", "mq": "posix mq"}
    if ipcs:
        expected["ipcs_lists_it"] = True
    assert out == expected


@pytest.mark.usefixtures("no_leftovers")
def test_signals_timers_and_timeouts(api_run: SandboxRun) -> None:
    need("python3", "sh", "sleep")
    out = ok_json(
        api_run(
            probe_argv(r"""
import select, signal, subprocess, sys, time
CHILD = '''
import os, signal
def bye(signum, frame):  # may run inside print("ready"): no second print, no exit's flush
    os.write(1, f"got {signal.Signals(signum).name}\\n".encode())
    os._exit(3)
signal.signal(signal.SIGTERM, bye)
print("ready", flush=True)
while True:
    signal.pause()
'''
p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
out["child"] = [p.stdout.readline().strip()]
p.terminate()
out["child"] += [p.stdout.readline().strip(), p.wait(timeout=5)]
p = subprocess.Popen(["sleep", "30"])
p.kill()
out["killed"] = p.wait(timeout=5)
p = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"], start_new_session=True)
time.sleep(0.1)
os.killpg(p.pid, signal.SIGTERM)
out["group"] = p.wait(timeout=5)
script = 'trap "echo trapped; exit 5" TERM; kill -TERM $$; sleep 5'
r = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
out["sh_trap"] = [r.stdout.strip(), r.returncode]
hits = []
signal.signal(signal.SIGALRM, lambda s, f: hits.append("alrm"))
signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
deadline = time.monotonic() + 5
while hits.count("alrm") < 3 and time.monotonic() < deadline:
    signal.pause()
signal.setitimer(signal.ITIMER_REAL, 0)
out["itimer"] = hits.count("alrm") >= 3
signal.signal(signal.SIGUSR1, lambda s, f: hits.append("usr1"))
signal.raise_signal(signal.SIGUSR1)
os.kill(os.getpid(), signal.SIGUSR1)
out["usr1"] = hits.count("usr1")
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
os.kill(os.getpid(), signal.SIGUSR2)
out["pending"] = signal.SIGUSR2 in signal.sigpending()
info = signal.sigtimedwait({signal.SIGUSR2}, 1)
out["sigtimedwait"] = [info.si_signo == signal.SIGUSR2, info.si_pid == os.getpid()]
out["sigtimedwait_none"] = signal.sigtimedwait({signal.SIGUSR2}, 0.05)
def took(fn):
    t = time.monotonic()
    result = fn()
    return [result, time.monotonic() - t >= 0.095]
r, w = os.pipe()
out["sleep"] = took(lambda: time.sleep(0.1))
out["select"] = took(lambda: select.select([r], [], [], 0.1))
poller = select.poll()
poller.register(r, select.POLLIN)
out["poll"] = took(lambda: poller.poll(100))
ep = select.epoll()
ep.register(r, select.EPOLLIN)
out["epoll"] = took(lambda: ep.poll(0.1))
os.write(w, b"x")
out["epoll_ready"] = ep.poll(1) == [(r, select.EPOLLIN)]
""")
        )
    )
    assert out == {
        "child": ["ready", "got SIGTERM", 3],
        "killed": -9,
        "group": -15,
        "sh_trap": ["trapped", 5],
        "itimer": True,
        "usr1": 2,
        "pending": True,
        "sigtimedwait": [True, True],
        "sigtimedwait_none": None,
        "sleep": [None, True],
        "select": [[[], [], []], True],
        "poll": [[], True],
        "epoll": [[], True],
        "epoll_ready": True,
    }


def test_proc_self_status_limits_and_clocks(api_run: SandboxRun) -> None:
    need("python3", "date")
    host_zone = subprocess.run(["date", "+%Z"], capture_output=True, text=True, env={"PATH": SANDBOX_PATH}).stdout
    out = ok_json(
        api_run(
            probe_argv(r"""
import resource, subprocess, time
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
out["status"] = {
    "Name": status["Name"].strip(),
    "State": status["State"].split()[0],
    "Pid_is_me": int(status["Pid"]) == os.getpid(),
    "PPid_is_parent": int(status["PPid"]) == os.getppid(),
    "Uid": status["Uid"].split(),
    "Gid": status["Gid"].split(),
    "Threads": int(status["Threads"]),
    "VmRSS_positive": int(status["VmRSS"].split()[0]) > 0,
}
out["exe"] = os.path.basename(os.readlink("/proc/self/exe")).startswith("python3")
out["cmdline"] = open("/proc/self/cmdline", "rb").read().split(b"\0")[:2] == [b"python3", b"-c"]
out["stdin"] = os.readlink("/proc/self/fd/0")
out["maps_python"] = any("python3" in line for line in open("/proc/self/maps"))
out["stat_fields"] = len(open("/proc/self/stat").read().rsplit(")", 1)[1].split()) >= 40
out["environ_home"] = b"HOME=/workspace" in open("/proc/self/environ", "rb").read().split(b"\0")
out["proc_files"] = [
    len(open("/proc/loadavg").read().split()),
    "MemTotal:" in open("/proc/meminfo").read(),
    "processor" in open("/proc/cpuinfo").read(),
    float(open("/proc/uptime").read().split()[0]) > 0,
]
limits = {l[:26].strip(): l[26:].split()[:2] for l in open("/proc/self/limits").read().splitlines()[1:]}
out["limits"] = [limits["Max open files"], limits["Max core file size"]]
out["rlimit"] = [list(resource.getrlimit(resource.RLIMIT_NOFILE)), list(resource.getrlimit(resource.RLIMIT_CORE))]
out["rusage"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0
out["cpus"] = [os.cpu_count() >= 1, len(os.sched_getaffinity(0)) >= 1]
clocks = [time.CLOCK_REALTIME, time.CLOCK_MONOTONIC, time.CLOCK_BOOTTIME]
clocks += [time.CLOCK_PROCESS_CPUTIME_ID, time.CLOCK_THREAD_CPUTIME_ID]
out["clocks"] = all(time.clock_gettime(c) > 0 for c in clocks)
out["clock_res"] = time.clock_getres(time.CLOCK_MONOTONIC) <= 0.001
t = time.monotonic_ns()
out["monotonic"] = time.monotonic_ns() >= t
out["process_time"] = [os.times().elapsed > 0, time.process_time() > 0]
out["zone"] = subprocess.run(["date", "+%Z"], capture_output=True, text=True).stdout
out["localtime_zone"] = time.strftime("%Z") == out["zone"].strip()
out["nice"] = os.nice(0)
""")
        )
    )
    assert out == {
        "status": {
            "Name": "python3",
            "State": "R",
            "Pid_is_me": True,
            "PPid_is_parent": True,
            "Uid": ["1000"] * 4,
            "Gid": ["1000"] * 4,
            "Threads": 1,
            "VmRSS_positive": True,
        },
        "exe": True,
        "cmdline": True,
        "stdin": "/dev/null",
        "maps_python": True,
        "stat_fields": True,
        "environ_home": True,
        "proc_files": [5, True, True, True],
        "limits": [["1024", "1024"], ["0", "0"]],  # README: open_files 1024, core dumps always off
        "rlimit": [[1024, 1024], [0, 0]],
        "rusage": True,
        "cpus": [True, True],
        "clocks": True,
        "clock_res": True,
        "monotonic": True,
        "process_time": [True, True],
        "zone": host_zone,  # /etc/localtime is the host's
        "localtime_zone": True,
        "nice": 0,
    }


INIT_USER = "sandbox" if OWN_IDS else "root"  # own mode: init has the payload's uid


def test_procps_tools_see_only_the_sandbox(api_run: SandboxRun) -> None:
    need("ps", "pgrep", "free", "top", "uptime", "sleep", "awk")
    out = api_run(
        sh(r"""
sleep 30 &
bg=$!
until [ "$(cat /proc/$bg/comm)" = sleep ]; do sleep 0.01; done  # the child has exec'ed sleep
echo "--- ps"
ps -eo pid=,user=,comm= > ps.txt  # not into a pipe: its other commands would race with ps
awk '{print $2, $3}' ps.txt | sort
echo "--- pid1"
ps -o comm= -p 1
echo "--- pgrep"
test "$(pgrep -x sleep)" = "$bg" && echo pgrep-finds-it
echo "--- rss"
test "$(ps -o rss= -p $$)" -gt 0 && echo rss-ok
echo "--- free"
free -k | awk 'NR == 2 {print $1, ($2 > 0)}'
echo "--- top"
top -b -n 1 -w 512 | awk 'NR == 1 {print $1}'
top -b -n 1 -w 512 | awk '$1 == "1" {print $NF}'
echo "--- uptime"
uptime | grep -q 'load average' && echo uptime-ok
kill "$bg"
wait "$bg" || echo "sleep ended by signal $(( $? - 128 ))"
""")
    )
    assert sections(ok(out)) == {
        "": "",
        "ps": f"{INIT_USER} nsbox-init\nsandbox nsbox-launcher\nsandbox ps\nsandbox sh\nsandbox sleep",
        "pid1": "nsbox-init",
        "pgrep": "pgrep-finds-it",
        "rss": "rss-ok",
        "free": "Mem: 1",
        "top": "top\nnsbox-init",
        "uptime": "uptime-ok\nsleep ended by signal 15",
    }


# --- Data formats, crypto, archives ---------------------------------------------------------


def test_tempfile_make_archive_and_zipfile(api_run: SandboxRun) -> None:
    need_python("tempfile", "zipfile", "tarfile", "lzma", "bz2", "zlib")
    out = ok_json(
        api_run(
            probe_argv(r"""
import hashlib, shutil, tempfile, zipfile
blob = bytes(range(256)) * 400
out["gettempdir"] = tempfile.gettempdir()
with tempfile.TemporaryDirectory(prefix="work-") as d:
    out["tmp_parent"] = os.path.dirname(d)
    src = os.path.join(d, "src")
    os.makedirs(os.path.join(src, "sub"))
    with open(os.path.join(src, "a.txt"), "w") as f:
        f.write("alpha\n")
    with open(os.path.join(src, "sub", "b.bin"), "wb") as f:
        f.write(blob)
    out["formats"] = {}
    for fmt in ("zip", "tar", "gztar", "bztar", "xztar"):
        archive = shutil.make_archive(os.path.join(d, "arch-" + fmt), fmt, root_dir=src)
        dest = os.path.join(d, "x-" + fmt)
        shutil.unpack_archive(archive, dest)
        with open(os.path.join(dest, "a.txt")) as a, open(os.path.join(dest, "sub", "b.bin"), "rb") as b:
            out["formats"][fmt] = [a.read(), hashlib.sha256(b.read()).hexdigest()]
    zpath = os.path.join(d, "multi.zip")
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("deflated.txt", "d" * 10000, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("lzma.txt", "l" * 10000, compress_type=zipfile.ZIP_LZMA)
        z.writestr("bzip2.txt", "b" * 10000, compress_type=zipfile.ZIP_BZIP2)
        z.writestr("stored.txt", "s" * 100)
    with zipfile.ZipFile(zpath) as z:
        out["zip"] = [z.testzip(), sorted(z.namelist()), z.read("lzma.txt") == b"l" * 10000]
        out["zip_compressed"] = [i.filename for i in z.infolist() if i.compress_size < i.file_size // 10]
    with tempfile.NamedTemporaryFile("w+", dir=d, suffix=".txt") as f:
        f.write("named")
        f.flush()
        f.seek(0)
        out["named"] = [f.read(), os.path.exists(f.name), f.name.endswith(".txt")]
    with tempfile.SpooledTemporaryFile(max_size=10) as f:
        f.write(b"x" * 100)
        out["spooled_rolled_to_disk"] = f._rolled
    fd, path = tempfile.mkstemp()
    os.close(fd)
    os.unlink(path)
    shutil.copytree(src, os.path.join(d, "copy"))
    out["copytree"] = sorted(os.listdir(os.path.join(d, "copy")))
out["tmp_after"] = os.listdir("/tmp")
""")
        )
    )
    entry = ["alpha\n", hashlib.sha256(bytes(range(256)) * 400).hexdigest()]
    assert out == {
        "gettempdir": "/tmp",
        "tmp_parent": "/tmp",
        "formats": dict.fromkeys(("zip", "tar", "gztar", "bztar", "xztar"), entry),
        "zip": [None, ["bzip2.txt", "deflated.txt", "lzma.txt", "stored.txt"], True],
        "zip_compressed": ["deflated.txt", "lzma.txt", "bzip2.txt"],
        "named": ["named", True, True],
        "spooled_rolled_to_disk": True,
        "copytree": ["a.txt", "sub"],
        "tmp_after": [],  # everything tempfile made is gone again
    }


def test_json_hashlib_zlib_and_ssl_modules(api_run: SandboxRun) -> None:
    need_python("ssl", "hashlib", "zlib", "lzma", "bz2", "json")
    out = ok_json(
        api_run(
            probe_argv(r"""
import base64, bz2, gzip, hashlib, hmac, lzma, secrets, ssl, uuid, zlib
data = b"nsbox workload " * 4096
names = ("md5", "sha1", "sha256", "sha3_256", "blake2b")
out["digests"] = {name: hashlib.new(name, data).hexdigest() for name in names}
out["pbkdf2"] = hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 1000).hex()
out["scrypt"] = hashlib.scrypt(b"password", salt=b"salt", n=1024, r=8, p=1, dklen=16).hex()
out["hmac"] = hmac.new(b"key", data, "sha256").hexdigest()
out["checksums"] = [zlib.crc32(data), zlib.adler32(data)]
packed = zlib.compress(data, 9)
out["zlib"] = [zlib.decompress(packed) == data, len(packed) < len(data) // 100]
out["codecs"] = [m.decompress(m.compress(data)) == data for m in (gzip, bz2, lzma)]
doc = {"name": "sandbox ✓", "nested": [1, 2.5, None, True, {"k": "v"}]}
out["json"] = json.loads(json.dumps(doc, ensure_ascii=True)) == doc
out["base64"] = base64.b64decode(base64.b64encode(data)) == data
out["random"] = [len(secrets.token_bytes(32)), len(os.urandom(16)), uuid.uuid4().version]
ctx = ssl.create_default_context()
out["ssl"] = [ctx.verify_mode == ssl.CERT_REQUIRED, ctx.check_hostname, ctx.cert_store_stats()["x509_ca"] > 0]
out["openssl"] = ssl.OPENSSL_VERSION.split()[0]
""")
        )
    )
    data = b"nsbox workload " * 4096
    assert out == {
        "digests": {n: hashlib.new(n, data).hexdigest() for n in ("md5", "sha1", "sha256", "sha3_256", "blake2b")},
        "pbkdf2": hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 1000).hex(),
        "scrypt": hashlib.scrypt(b"password", salt=b"salt", n=1024, r=8, p=1, dklen=16).hex(),
        "hmac": hmac.new(b"key", data, "sha256").hexdigest(),
        "checksums": [zlib.crc32(data), zlib.adler32(data)],
        "zlib": [True, True],
        "codecs": [True, True, True],
        "json": True,
        "base64": True,
        "random": [32, 16, 4],
        "ssl": [True, True, True],  # the host's CA bundle is visible through /etc/ssl/certs
        "openssl": "OpenSSL",
    }


def test_tls_handshake_over_loopback_with_a_fresh_certificate(api_run: SandboxRun) -> None:
    need("openssl")
    need_python("ssl")
    out = ok_json(
        api_run(
            probe_argv(r"""
import ssl, subprocess, threading
subprocess.run(
    ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
     "-keyout", "key.pem", "-out", "cert.pem", "-days", "1", "-subj", "/CN=localhost",
     "-addext", "subjectAltName=DNS:localhost"],
    check=True, capture_output=True)
out["subject"] = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", "cert.pem"],
                                capture_output=True, text=True, check=True).stdout.strip()
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain("cert.pem", "key.pem")
srv = socket.create_server(("127.0.0.1", 0))
def serve():
    conn, _ = srv.accept()
    with server_ctx.wrap_socket(conn, server_side=True) as tls:
        tls.sendall(tls.recv(100).upper())
    conn, _ = srv.accept()  # the client with the wrong name hangs up during the handshake
    try:
        server_ctx.wrap_socket(conn, server_side=True).close()
    except ssl.SSLError:
        conn.close()
t = threading.Thread(target=serve)
t.start()
client_ctx = ssl.create_default_context(cafile="cert.pem")
with socket.create_connection(srv.getsockname(), timeout=10) as raw:
    with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"over tls")
        out["echo"] = tls.recv(100).decode()
        out["version"] = tls.version()
        out["peer_cn"] = dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]
with socket.create_connection(srv.getsockname(), timeout=10) as raw:  # a wrong name is refused
    try:
        client_ctx.wrap_socket(raw, server_hostname="not-localhost")
        out["wrong_name"] = "accepted?"
    except ssl.SSLCertVerificationError:
        out["wrong_name"] = "refused"
t.join(timeout=10)
""")
        )
    )
    assert out["subject"].replace(" ", "") == "subject=CN=localhost"
    del out["subject"]
    assert out == {"echo": "OVER TLS", "version": "TLSv1.3", "peer_cn": "localhost", "wrong_name": "refused"}


# --- Other everyday programs ------------------------------------------------------------------


def test_git_repository_commits_gc_and_clone(api_run: SandboxRun) -> None:
    need("git", "paste", "grep")
    out = api_run(
        sh(r"""
git init -q repo
cd repo
git config user.email sandbox@example.invalid
git config user.name sandbox
printf 'one\n' > f.txt
git add f.txt
git commit -q -m first
printf 'two\n' >> f.txt
git commit -q -am second
echo "--- log"
git log --format=%s | paste -sd, -
git rev-list --count HEAD
git diff --stat HEAD~1 | tail -1
echo "--- gc"
git gc -q
git count-objects -v | grep -E '^(count|in-pack):'
echo "--- clone"
git clone -q . ../clone
cat ../clone/f.txt
git -C ../clone status --porcelain | wc -l
""")
    )
    assert sections(ok(out)) == {
        "": "",
        "log": "second,first\n2\n 1 file changed, 1 insertion(+)",
        "gc": "count: 0\nin-pack: 6",  # 2 commits, 2 trees, 2 blobs
        "clone": "one\ntwo\n0",
    }


def test_perl_one_liners(api_run: SandboxRun) -> None:
    need("perl")
    out = api_run(
        sh(r"""
perl -e 'my %h; $h{$_}++ for split //, "mississippi"; print join(",", map {"$_=$h{$_}"} sort keys %h), "\n"'
printf 'alice 30\nbob 25\ncarol 35\n' | perl -lane '$s += $F[1]; END { print "total=$s" }'
perl -MList::Util=sum,max -MPOSIX=floor -e 'print sum(1..10), " ", max(3, 9, 4), " ", floor(2.7), "\n"'
printf 'a-b-c\n' > f.txt
perl -pi -e 's/-/+/g' f.txt
cat f.txt
perl -e 'open(my $fh, "-|", "echo", "from child") or die; print scalar <$fh>; close $fh; print "child=$?\n"'
perl -e 'my $pid = fork // die; if (!$pid) { exit 7 } waitpid($pid, 0); print "exit=", $? >> 8, "\n"'
""")
    )
    assert ok(out) == "i=4,m=1,p=2,s=4\ntotal=90\n55 9 2\na+b+c\nfrom child\nchild=0\nexit=7\n"


def test_awk_and_sed_one_liners(api_run: SandboxRun) -> None:
    need("awk", "sed", "seq", "cat")
    out = api_run(
        sh(r"""
seq 1 10 | awk '{ s += $1; if ($1 % 2 == 0) e = e $1 "," } END { printf "sum=%d evens=%s avg=%.2f\n", s, e, s / NR }'
echo 'k1=v1;k2=v2;k3=v3' |
  awk -F';' '{ for (i = NF; i >= 1; i--) { split($i, kv, "="); printf "%s:%s ", kv[2], kv[1] } print "" }'
echo 'mail alice@example and bob@test' | sed -E 's/([a-z]+)@([a-z]+)/\2 at \1/g'
printf 'one\ntwo\nthree\nfour\n' > lines.txt
sed -n '2,3p' lines.txt | sed 's/^/> /'
sed -i 's/two/TWO/; /four/d' lines.txt
cat lines.txt
printf 'x y z\n' | awk '{ gsub(/ /, "-"); print toupper($0), length($0) }'
""")
    )
    assert ok(out) == (
        "sum=55 evens=2,4,6,8,10, avg=5.50\n"
        "v3:k3 v2:k2 v1:k1 \n"
        "mail example at alice and test at bob\n"
        "> two\n> three\n"
        "one\nTWO\nthree\n"
        "X-Y-Z 5\n"
    )
