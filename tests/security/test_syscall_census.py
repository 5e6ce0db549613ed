"""Syscall census: every syscall number of the native table, tried from inside the sandbox.

census.c tries each number 0..600 once, in its own process, with harmless arguments, and
reports how it ended. Run under the default policy with its two errnos swapped for markers
no syscall returns for such arguments (``unknown_errno=ENOANO``, ``refuse_errno=EBADRQC``:
the same rules, only the answers differ), every number that does not come back with a
marker reached the kernel. That set must be exactly the documented allowlist. Run again
under the true default, every refused number must answer with the documented errno.
"""

from __future__ import annotations

import errno
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pyseccomp as sc
import pytest

from nsbox._seccomp import NOT_IMPLEMENTED, REFUSED, allowed_names
from tests.conftest import SandboxRun, require_sandbox

HERE = Path(__file__).parent
LAST = 600
UNKNOWN_MARK, REFUSED_MARK = errno.ENOANO, errno.EBADRQC
#: Numbers the kernel runs without consulting seccomp at all (6.13+: "seccomp: passthrough
#: uprobe systemcall without filtering"): they only work from a uprobe trampoline, and
#: from anywhere else end in SIGILL (uretprobe) or ENXIO (uprobe). Absent before 6.11.
KERNEL_EXEMPT = {335: ("signal", int(signal.SIGILL)), 336: ("errno", errno.ENXIO)}


def number(name: str) -> int:
    return int(sc.resolve_syscall(sc.Arch.NATIVE, name))


@pytest.fixture(scope="module")
def census(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_sandbox()
    gcc = shutil.which("gcc")
    assert gcc, "gcc is installed by scripts/install-deps.sh"
    out = tmp_path_factory.mktemp("census") / "census"
    subprocess.run([gcc, "-O1", "-Wall", "-Werror", "-o", str(out), str(HERE / "census" / "census.c")], check=True)
    out.chmod(0o755)  # bound in as a file: the sandbox's uid needs no way through tmp's parents
    return out


def run_census(api_run: SandboxRun, binary: Path, policy: Path | str) -> dict[int, tuple[str, int]]:
    out = api_run(["/probe/census", "0", str(LAST)], ro_bind=[f"{binary}:/probe/census"], seccomp=str(policy))
    assert out.status == "ok", out
    results = {}
    for line in out.stdout.decode().splitlines():
        nr, kind, value = line.split()
        results[int(nr)] = (kind, int(value))
    assert sorted(results) == list(range(LAST + 1))
    return results


def test_the_syscalls_that_reach_the_kernel_are_exactly_the_allowlist(
    api_run: SandboxRun, census: Path, tmp_path: Path
) -> None:
    marked = tmp_path / "marked.toml"
    marked.write_text('unknown_errno = "ENOANO"\nrefuse_errno = "EBADRQC"\n')
    results = run_census(api_run, census, marked)
    not_implemented = {number(n) for n in NOT_IMPLEMENTED.syscalls}
    refused = {
        (nr, "unknown" if v == UNKNOWN_MARK else "refused")
        for nr, (k, v) in results.items()
        if k == "errno" and v in (UNKNOWN_MARK, REFUSED_MARK)
    }
    reached = set(results) - {nr for nr, _ in refused} - not_implemented
    for nr in not_implemented:  # clone3: ENOSYS whatever the policy says, so that glibc falls back
        assert results[nr] == ("errno", errno.ENOSYS)
    for nr in reached & set(KERNEL_EXEMPT):
        assert results[nr] == KERNEL_EXEMPT[nr], (nr, results[nr])
    allowed = {number(n) for n in allowed_names()}
    assert reached - set(KERNEL_EXEMPT) == allowed
    refused_by_group = {number(n) for g in REFUSED for n in g.syscalls}
    assert {nr for nr, why in refused if why == "refused"} == refused_by_group


def test_refused_syscalls_answer_with_the_documented_errno(api_run: SandboxRun, census: Path) -> None:
    results = run_census(api_run, census, "default")
    allowed = {number(n) for n in allowed_names()}
    refused = {number(n) for g in REFUSED for n in g.syscalls}
    for nr, outcome in results.items():
        if nr in allowed or nr in KERNEL_EXEMPT:
            continue
        expected = errno.EPERM if nr in refused else errno.ENOSYS
        assert outcome == ("errno", expected), (nr, outcome)


def test_the_readme_documents_the_policy() -> None:
    readme = (HERE.parent.parent / "README.md").read_text()
    for marker, names in (
        ("allowlist", allowed_names()),
        ("refused", {n for g in (*REFUSED, NOT_IMPLEMENTED) for n in g.syscalls}),
    ):
        section = re.search(rf"<!-- {marker} -->(.*?)<!-- /{marker} -->", readme, re.S)
        assert section, f"README.md has the {marker} between <!-- {marker} --> markers"
        assert set(re.findall(r"`([a-z_0-9]+)`", section.group(1))) == names
