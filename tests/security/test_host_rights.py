"""The workspace file API may do exactly what the payload may do: no more rights than the sandbox.

``read_file``, ``write_file``, ``list_files`` and ``remove`` run in the supervisor, which acts
as the payload's uid and gid (setfsuid/setfsgid). The attack: everything else the supervisor
still carries from the embedding process, above all its supplementary groups (issue 17, 1).
A root:root 0640 file in a read-only bind is refused to ``cat`` inside, yet ``read_file``
returned it through the embedding process's group 0; a root:root 0660 file in a writable
bind was truncated to 0 bytes by ``write_file`` (O_TRUNC at open) before the call failed in
fchmod. What is required: the file API succeeds where the payload succeeds and fails where
it fails (reads and listings: iff; writes, creations and removals: the API may refuse more,
never less), a refusal is a PermissionError (EACCES, EPERM; EROFS in a read-only bind) and a
refused call changes nothing (content, size, mode, mtime, inode of the file; no file or
directory created; nothing removed).

The supervisor is forked from a per-process spawner that inherits the embedding process's
groups when it starts, on first use. So each scene runs in a fresh Python subprocess that
sets its groups (as root: group 0 and a spare gid G that no sandbox id and no /etc/group
entry uses; no group is added to the system) before its first NsSandbox, builds the files
after the sandbox started (then it knows the payload's host ids), probes each path once from
inside (``cat``, ``ls``, ``printf x >>`` on a twin file, ``rm`` of a twin) and once through
the API, and reports JSON on stdout. The rootless run (scripts/rootless-test.sh) runs the
property test with the files an ordinary user can make: its own, with its own groups.

Safety: every file touched is made here, in temporary directories (tmp* under /tmp) removed
after the test; the subprocess has a timeout, and a sandbox lives only inside it.
"""

from __future__ import annotations

import base64
import errno
import grp
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nsbox._userns import HOST_ID_BASE, ID_RANGE, RANGE_SLOTS
from tests.conftest import require_root, require_sandbox

REPO = Path(__file__).resolve().parents[2]
#: Errnos of a refusal by permissions: EACCES, EPERM; EROFS for a write in a read-only bind.
REFUSALS = {errno.EACCES, errno.EPERM, errno.EROFS}
API_WRITE = b"API-WROTE\n"
API_CREATE = b"API-CREATED\n"

# --- the probe, run in a fresh interpreter --------------------------------------------------
PROBE = r"""
import base64, hashlib, json, os, stat, sys
import nsbox

spec = json.load(sys.stdin)
if spec["groups"] is not None:
    os.setgroups(spec["groups"])  # before the first sandbox: the spawner inherits them
bases = {"ro": spec["ro"], "rw": spec["rw"]}


def host(path):
    where, _, rest = path.partition("/")
    return os.path.join(bases[where], rest)


def fingerprint(path):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            content = hashlib.sha256(f.read()).hexdigest()
    elif stat.S_ISDIR(st.st_mode):
        content = sorted(os.listdir(path))
    else:
        content = None
    return [content, st.st_size, oct(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid, st.st_ino]


def api(call):
    try:
        return {"ok": True, "value": call()}
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__, "errno": getattr(exc, "errno", None),
                "isoserror": isinstance(exc, OSError), "message": str(exc)[:300]}


mounts = (nsbox.Mount(spec["ro"], "/workspace/ro"), nsbox.Mount(spec["rw"], "/workspace/rw", writable=True))
report = {"groups": os.getgroups(), "probes": []}
with nsbox.NsSandbox(mounts=mounts) as sb:

    def payload(script, *args):
        r = sb.run(["sh", "-c", script, "sh", *args], capture_output=True, timeout=30)
        return {"exit": r.exit_code, "status": r.status.value, "stdout": base64.b64encode(r.stdout or b"").decode(),
                "stderr": (r.stderr or b"").decode(errors="replace")[:300]}

    made = payload("touch rw/.ids")  # a file the payload made: its host ids
    assert made["exit"] == 0, made
    st = os.stat(host("rw/.ids"))
    os.unlink(host("rw/.ids"))
    ids = {"payload": (st.st_uid, st.st_gid)}
    report["payload_ids"] = ids["payload"]
    for node in spec["nodes"]:  # directories before what they hold
        path = host(node["path"])
        if node["kind"] == "dir":
            os.mkdir(path)
        else:
            with open(path, "wb") as f:
                f.write(("CANARY " + node["path"] + "\n").encode())
        uid = ids["payload"][0] if node["owner"] == "payload" else node["owner"]
        gid = ids["payload"][1] if node["group"] == "payload" else node["group"]
        if uid is not None or gid is not None:
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
        os.chmod(path, node["mode"])
    for probe in spec["probes"]:
        op, path, twin = probe["op"], probe["path"], probe.get("twin")
        out = {"op": op, "path": path}
        watched = host(probe.get("watch", path))
        out["before"] = fingerprint(watched)
        if op == "read":
            out["payload"] = payload('cat -- "$1"', path)
            out["api"] = api(lambda: base64.b64encode(sb.read_file(path)).decode())
        elif op == "list":
            out["payload"] = payload('ls -A -- "$1"', path)
            out["api"] = api(lambda: sorted(f.name for f in sb.list_files(path)))
        elif op == "write":
            out["payload"] = payload('printf x >> "$1"', twin)
            out["api"] = api(lambda: sb.write_file(path, spec["write"]))
        elif op == "create":
            out["payload"] = payload('mkdir -p -- "$(dirname -- "$1")" && printf x > "$1"', twin)
            out["api"] = api(lambda: sb.write_file(path, spec["create"]))
        elif op == "remove":
            out["payload"] = payload('rm -f -- "$1" && test ! -e "$1"', twin)
            out["api"] = api(lambda: sb.remove(path))
        out["after"] = fingerprint(watched)
        report["probes"].append(out)
    payload("chmod -R a+rwX rw 2>/dev/null; true")  # what the payload made: removable by the test
print(json.dumps(report))
"""


@dataclass(frozen=True)
class Node:
    """A host file or directory of the scene, made by the probe once the sandbox runs.
    ``owner``/``group``: a host id, "payload" (the payload's host id), or None (ours)."""

    path: str  # "ro/..." (bound read-only at /workspace/ro) or "rw/..." (writable, /workspace/rw)
    mode: int
    owner: int | str | None = None
    group: int | str | None = None
    kind: str = "file"

    def describe(self) -> str:
        return f"{self.kind} {self.owner}:{self.group} {self.mode:04o}"


@dataclass
class Scene:
    nodes: list[Node]
    probes: list[dict[str, Any]]

    def add(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def read(self, node: Node) -> None:
        self.probes.append({"op": "read", "path": node.path, "what": node.describe()})

    def list(self, node: Node) -> None:
        self.probes.append({"op": "list", "path": node.path, "what": node.describe()})

    def write(self, node: Node, must: bool = False) -> None:
        """``node`` is written by the API; a twin made alike is appended to by the payload."""
        self.add(node)
        self.add(Node(node.path + ".twin", node.mode, node.owner, node.group))
        self.probes.append({"op": "write", "path": node.path, "twin": node.path + ".twin", "what": node.describe()})
        self.probes[-1]["must"] = must

    def create(self, directory: Node, rel: str, must: bool = False) -> None:
        """A new file ``rel`` (its first part may be a new directory) in ``directory``."""
        first = rel.split("/")[0]
        twin = rel.replace(first, first + ".p", 1)
        self.probes.append(
            {
                "op": "create",
                "path": f"{directory.path}/{rel}",
                "twin": f"{directory.path}/{twin}",
                "watch": f"{directory.path}/{first}",
                "what": f"new in {directory.describe()}",
                "must": must,
            }
        )

    def remove(self, node: Node, parent: Node) -> None:
        """``node`` is removed by the API, a twin made alike by the payload."""
        self.add(node)
        self.add(Node(node.path + ".twin", node.mode, node.owner, node.group))
        what = f"{node.describe()} in {parent.describe()}"
        self.probes.append({"op": "remove", "path": node.path, "twin": node.path + ".twin", "what": what})


#: A directory of the writable bind that the payload cannot write (nor a borrowed group):
#: there a file changes only by a write in place, never by a rename over it.
FIXED_ROOT = Node("rw/fixed", 0o755, 0, 0, "dir")


@pytest.fixture
def host_dirs() -> Iterator[Callable[[], tuple[Path, Path]]]:
    """(ro, rw): two fresh host directories (tmp* under /tmp), removed after the test."""
    made: list[Path] = []

    def make() -> tuple[Path, Path]:
        ro = Path(os.path.realpath(tempfile.mkdtemp(prefix="tmp-nsbox-rights-ro-")))
        rw = Path(os.path.realpath(tempfile.mkdtemp(prefix="tmp-nsbox-rights-rw-")))
        made.extend((ro, rw))
        os.chmod(ro, 0o755)
        os.chmod(rw, 0o777)  # the payload creates and removes files here
        return ro, rw

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def run_scene(dirs: tuple[Path, Path], scene: Scene, groups: list[int] | None) -> dict[str, Any]:
    """Runs the probe in a fresh interpreter (with ``groups``, as root); its JSON report."""
    ro, rw = dirs
    spec = {
        "groups": groups,
        "ro": str(ro),
        "rw": str(rw),
        "nodes": [vars(node) for node in scene.nodes],
        "probes": scene.probes,
        "write": API_WRITE.decode(),
        "create": API_CREATE.decode(),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE],
            input=json.dumps(spec).encode(),
            capture_output=True,
            timeout=240,
            cwd=REPO,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the probe subprocess did not finish in {exc.timeout} s")
    assert done.returncode == 0, f"the probe failed ({done.returncode}):\n{done.stderr.decode(errors='replace')}"
    report: dict[str, Any] = json.loads(done.stdout)
    for probe, asked in zip(report["probes"], scene.probes, strict=True):
        probe["what"], probe["must"] = asked["what"], asked.get("must", False)
    return report


def spare_gid() -> int:
    """A gid no group of /etc/group and no sandbox id uses: the embedding process's group G."""
    top = HOST_ID_BASE + RANGE_SLOTS * ID_RANGE
    for gid in range(top + 7919, top + 7919 + 1000):
        try:
            grp.getgrgid(gid)
        except KeyError:
            return gid
    raise AssertionError("no spare gid")


def _refusal_ok(result: dict[str, Any]) -> bool:
    return bool(result.get("isoserror")) and result.get("errno") in REFUSALS


def _said(result: dict[str, Any]) -> str:
    if result["ok"]:
        return "succeeded"
    return f"raised {result['error']} (errno {result['errno']}: {result['message']})"


def violations(report: dict[str, Any]) -> list[str]:
    """Each probe where the API did more than the payload, less where it must match, or
    changed something while failing."""
    failures: list[str] = []
    for probe in report["probes"]:
        op, path, api, payload = probe["op"], probe["path"], probe["api"], probe["payload"]
        can, did = payload["exit"] == 0, api["ok"]
        label = f"{op} {path} [{probe['what']}]"
        inside = "could" if can else f"could not ({payload['stderr'].strip() or 'exit ' + str(payload['exit'])})"
        if op in ("write", "remove") and probe["before"] is None:
            failures.append(f"{label}: the scene is broken: no such file on the host")
        if op in ("read", "list"):
            if did != can:
                failures.append(f"{label}: the API {_said(api)}, the payload {inside}")
            elif did and op == "read" and api["value"] != payload["stdout"]:
                failures.append(f"{label}: read_file and cat returned different bytes")
            elif did and op == "list":
                names = sorted(base64.b64decode(payload["stdout"]).decode().split())
                if api["value"] != names:
                    failures.append(f"{label}: list_files {api['value']} != ls {names}")
        elif did and not can:
            failures.append(f"{label}: the API succeeded where the payload {inside}")
        elif not did and probe["must"] and can:
            failures.append(f"{label}: the API {_said(api)}, yet the payload (owner) could: the file API is broken")
        if not did:
            if probe["before"] != probe["after"]:
                failures.append(f"{label}: {_said(api)}, but changed {probe['before']} -> {probe['after']}")
            if not _refusal_ok(api):
                failures.append(f"{label}: {_said(api)}; a refusal is a PermissionError (or EROFS)")
        elif op == "write" and probe["after"][0] != hashlib.sha256(API_WRITE).hexdigest():
            failures.append(f"{label}: write_file succeeded but the file holds {probe['after']}")
    return failures


# --- the repros of the issue -----------------------------------------------------------------
def test_read_file_does_not_borrow_the_embedding_processs_groups(host_dirs: Callable[[], tuple[Path, Path]]) -> None:
    """Groups [0]: a root:root 0640 file in a read-only bind, refused to cat inside."""
    require_sandbox()
    require_root("sets the embedding process's groups and makes root-owned files")
    scene = Scene([], [])
    scene.read(scene.add(Node("ro/secret", 0o640, 0, 0)))
    report = run_scene(host_dirs(), scene, [0])
    probe = report["probes"][0]
    assert probe["payload"]["exit"] != 0, f"premise: cat inside should be refused: {probe['payload']}"
    leaked = base64.b64decode(probe["api"].get("value") or "")
    assert not probe["api"]["ok"], f"read_file returned {leaked!r}, a file the payload cannot read (groups {[0]})"
    assert _refusal_ok(probe["api"]), f"read_file {_said(probe['api'])}; expected PermissionError"


def test_a_refused_write_file_leaves_the_file_untouched(host_dirs: Callable[[], tuple[Path, Path]]) -> None:
    """Groups [0]: 4242:0 0660 and 4242:0 0666 in a writable bind, in a folder of 4242's. As
    root a writable bind is idmapped (root's files are the payload's own there), and the kernel
    gives no write access through an idmap to a file whose owner it does not map: the payload
    may write neither, even the 0666 one, nor replace them by a rename. write_file must not
    truncate first and fail after: each refusal leaves content, size, mode and mtime as they
    were."""
    require_sandbox()
    require_root("sets the embedding process's groups and makes files of other users")
    scene = Scene([], [])
    scene.add(Node("rw/others", 0o755, 4242, 0, "dir"))
    scene.write(Node("rw/others/group0", 0o660, 4242, 0))
    scene.write(Node("rw/others/everyone", 0o666, 4242, 0))
    report = run_scene(host_dirs(), scene, [0])
    failures: list[str] = []
    for probe in report["probes"]:
        assert probe["payload"]["exit"] != 0, f"premise: the payload may not write {probe['what']}: {probe}"
        if probe["api"]["ok"]:
            failures.append(f"write_file wrote {probe['what']}, which the payload cannot write (groups [0])")
        elif not _refusal_ok(probe["api"]):
            failures.append(f"write_file({probe['what']}) {_said(probe['api'])}; expected PermissionError")
        elif probe["before"] != probe["after"]:
            failures.append(
                f"write_file({probe['path']}) {_said(probe['api'])} after changing the file: "
                f"{probe['before']} -> {probe['after']} (size {probe['before'][1]} -> {probe['after'][1]})"
            )
    assert failures == [], "\n".join(failures)


# --- the property ------------------------------------------------------------------------------
def root_scene(g: int) -> Scene:
    """Owners and groups an embedding process with groups [0, G] could borrow, negative
    group permissions (its groups would deny what "other" allows the payload), files the
    payload owns, and directories that only a borrowed group lets one traverse, list or write."""
    s = Scene([], [])
    for name, owner, group, mode in (
        ("rr0640", 0, 0, 0o640),
        ("rG0640", 0, g, 0o640),
        ("uG0440", 4242, g, 0o440),
        ("rr0604", 0, 0, 0o604),  # group 0 is denied what other may
        ("rG0604", 0, g, 0o604),
        ("rr0600", 0, 0, 0o600),
        ("rr0644", 0, 0, 0o644),
        ("pp0600", "payload", "payload", 0o600),
        ("pr0066", "payload", 0, 0o066),  # the owner is denied what group and other may
    ):
        s.read(s.add(Node(f"ro/{name}", mode, owner, group)))
    for name, group, mode in (("gdir", g, 0o750), ("xgdir", g, 0o710), ("rdir", 0, 0o750), ("odir", 0, 0o755)):
        directory = s.add(Node(f"ro/{name}", mode, 0, group, "dir"))
        s.read(s.add(Node(f"ro/{name}/f", 0o644, 0, 0)))
        s.list(directory)
    s.write(Node("rw/pp0644", 0o644, "payload", "payload"), must=True)  # in-place or replaced: both fine
    s.add(FIXED_ROOT)  # the payload can only write in place here, not replace by a rename
    for name, owner, group, mode in (
        ("rr0660", 0, 0, 0o660),
        ("rG0660", 0, g, 0o660),
        ("rG0620", 0, g, 0o620),
        ("rr0666", 0, 0, 0o666),
        ("rr0644", 0, 0, 0o644),
        ("rG0606", 0, g, 0o606),
        ("pp0644", "payload", "payload", 0o644),
        ("pp0444", "payload", "payload", 0o444),
        ("pG0460", "payload", g, 0o460),
    ):
        s.write(Node(f"rw/fixed/{name}", mode, owner, group))
    s.write(Node("ro/rr0666", 0o666, 0, 0))  # a read-only bind: EROFS for both
    for name, group, mode in (("gdir", g, 0o770), ("rdir", 0, 0o770), ("odir", 0, 0o777)):
        directory = s.add(Node(f"rw/{name}", mode, 0, group, "dir"))
        s.create(directory, "new", must=name == "odir")
        s.create(directory, "newsub/f", must=name == "odir")
        s.remove(Node(f"rw/{name}/victim", 0o644, 0, 0), directory)
    return s


def own_scene(groups: list[int]) -> Scene:
    """What an ordinary user can make: files of its own, with its own groups."""
    s = Scene([], [])
    primary, other = groups[0], groups[-1]
    for name, group, mode in (
        ("s0640", primary, 0o640),
        ("o0640", other, 0o640),
        ("s0604", primary, 0o604),
        ("o0604", other, 0o604),
        ("s0600", primary, 0o600),
        ("s0644", primary, 0o644),
        ("s0460", primary, 0o460),
    ):
        s.read(s.add(Node(f"ro/{name}", mode, None, group)))
    for name, group, mode in (("gdir", primary, 0o750), ("xgdir", other, 0o710), ("odir", primary, 0o755)):
        directory = s.add(Node(f"ro/{name}", mode, None, group, "dir"))
        s.read(s.add(Node(f"ro/{name}/f", 0o644, None, primary)))
        s.list(directory)
    s.add(Node("rw/fixed", 0o755, None, primary, "dir"))  # ours: the payload cannot replace files here
    for name, group, mode in (
        ("s0660", primary, 0o660),
        ("o0660", other, 0o660),
        ("s0666", primary, 0o666),
        ("s0644", primary, 0o644),
        ("s0606", primary, 0o606),
        ("s0600", primary, 0o600),
    ):
        s.write(Node(f"rw/fixed/{name}", mode, None, group))
    for name, group, mode in (("gdir", primary, 0o770), ("odir", primary, 0o777)):
        directory = s.add(Node(f"rw/{name}", mode, None, group, "dir"))
        s.create(directory, "new", must=name == "odir")
        s.remove(Node(f"rw/{name}/victim", 0o644, None, primary), directory)
    return s


def test_the_file_api_can_do_what_the_payload_can_and_no_more(host_dirs: Callable[[], tuple[Path, Path]]) -> None:
    """For each file and directory of the scene: read_file and list_files succeed iff cat
    and ls do inside (and return the same); write_file, write_file of a new file and remove
    never succeed where the payload's append, create or rm fails; every refusal is a
    PermissionError that changed nothing. As root the embedding process has groups [0, G];
    rootless (scripts/rootless-test.sh), the user's own groups and files."""
    require_sandbox()
    if os.geteuid() == 0:
        g = spare_gid()
        groups: list[int] | None = [0, g]
        scene = root_scene(g)
    else:
        groups = None
        own = [os.getegid()] + [gid for gid in os.getgroups() if gid != os.getegid()]
        scene = own_scene(own)
    report = run_scene(host_dirs(), scene, groups)
    if groups is not None:
        assert sorted(report["groups"]) == sorted(groups), report["groups"]
    failures = violations(report)
    header = f"embedding groups {report['groups']}, payload host ids {report['payload_ids']}:"
    assert failures == [], "\n".join([header, *failures])
