"""Helpers shared by the attack tests: raw-syscall probes, marked policies, C probes.

``syscall_probe(code, *names)`` is ``probe_argv`` with two more things in scope inside the
sandbox: ``NR``, the native numbers of the named syscalls (resolved on the host by
libseccomp, so that probes say ``NR["unshare"]`` and not a magic number), and
``raw(nr, *args)``, a raw ``syscall(2)`` that returns the result, or the errno's name
("EPERM") when it fails.

A *marked* policy is the default policy with its two errnos swapped for markers no
syscall returns for such arguments (as ``test_syscall_census`` does): an answer of
``REFUSED_MARK`` can only come from the filter. It is the premise check of the refused
groups, whose default errno (EPERM) the kernel would often give as well.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pyseccomp as sc

from tests.conftest import Outcome, probe_argv

HERE = Path(__file__).parent
PROBES = HERE / "probes"
REFUSED_MARK = "EBADRQC"
UNKNOWN_MARK = "ENOANO"
SIGSYS_EXIT = 128 + 31

SYSCALL_PRELUDE = """
libc.syscall.restype = ctypes.c_long
def raw(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return r if r != -1 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
def close_if_fd(r):
    if isinstance(r, int) and r >= 0:
        os.close(r)
        return "ok"
    return r
def status_field(name, path="/proc/self/status"):
    for line in open(path):
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
"""


def nr(name: str) -> int:
    number = int(sc.resolve_syscall(sc.Arch.NATIVE, name))
    assert number >= 0, f"{name} is no syscall of this machine"
    return number


def syscall_probe(code: str, *names: str) -> list[str]:
    numbers = {name: nr(name) for name in names}
    return probe_argv(f"{SYSCALL_PRELUDE}\nNR = {numbers!r}\n{code}")


def marked_policy(directory: Path) -> str:
    policy = directory / "marked.toml"
    policy.write_text(f'unknown_errno = "{UNKNOWN_MARK}"\nrefuse_errno = "{REFUSED_MARK}"\n')
    return str(policy)


def compile_probe(source: str, out_dir: Path, name: str | None = None) -> Path:
    """Compile tests/security/probes/SOURCE on the host; the binary is bound into the
    sandbox as a file, so the sandbox's uid needs no way through out_dir's parents."""
    gcc = shutil.which("gcc")
    assert gcc, "gcc is installed by scripts/install-deps.sh"
    binary = out_dir / (name or Path(source).stem)
    subprocess.run([gcc, "-O1", "-Wall", "-Werror", "-o", str(binary), str(PROBES / source)], check=True)
    os.chmod(binary, 0o755)
    return binary


def reported(outcome: Outcome) -> Any:
    """The probe's ``out`` dict; a probe that crashed fails the test with its stderr."""
    assert outcome.status == "ok", (outcome.status, outcome.exit_code, outcome.stderr.decode()[-3000:])
    return outcome.json()
