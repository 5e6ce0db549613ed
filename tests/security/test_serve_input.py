"""``nsbox serve``, attacked with bad input: every request a client could get wrong or forge.

The acceptance point: malformed JSON, wrong types, unknown fields, values past the server's
maxima, oversize bodies (declared and chunked), ``..`` and absolute file paths, symlinks and
FIFOs planted by the sandbox, a missing or wrong token, another token's session id. Each must
be answered at once with a clear 4xx naming the field at fault (``detail[].loc``), create
nothing (no session, no run, no memory held: the listings, ``/healthz`` and the gauges and
counters of ``/metrics`` are the same before and after), and read or write nothing outside
the session's workspace (the host's /etc/passwd and canaries made here keep their bytes,
inode and mtime; no reply carries a line of the host's /etc/passwd).

Every refusal has its premise in the same test: the same route, with the attack taken out,
is answered (a file inside the workspace is read, a chunked body under the cap is taken, a
token's own session is served), so a server that refused everything would fail.

Two real servers (``tests/_serve.py``) serve the whole module: one for input and files
(``SERVE_ARGS``), one with tight quotas (``QUOTA_ARGS``); the start-up refusals run the CLI
itself. Safety: these tests run as root on a shared machine, so a write or removal that
could get through aims only at canaries made here, or at the host's /etc/passwd with its own
bytes (and the file is put back if it changed anyway).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._serve import Reply, Served, served
from tests.conftest import NSBOX_CLI, fingerprint, require_run_code, require_sandbox, restoring, wait_until

MiB = 1 << 20
PASSWD = Path("/etc/passwd")
JSON = {"Content-Type": "application/json"}
#: Distinct, random tokens, so that a token found in a log or a reply can only have been copied there.
TOKENS = {"alice": f"alice-{secrets.token_hex(16)}", "bob": f"bob-{secrets.token_hex(16)}"}
ALICE, BOB = TOKENS["alice"], TOKENS["bob"]
#: Maxima the requests below go past: 20 s of timeout, 256 MiB of memory, a 1 MiB body.
MAX_TIMEOUT, MAX_MEMORY_MB = 20, 256
SERVE_ARGS = (
    "--max-body", "1M",
    "--max-timeout", str(MAX_TIMEOUT), "--default-timeout", "10",
    "--max-memory", f"{MAX_MEMORY_MB}M", "--default-memory", "128M",
    "--workers", "1", "--pool-size", "0", "--memory-budget", "2G",
    "--requests-per-minute", "100000",
)  # fmt: skip
#: The default --max-memory (2 GiB), held by the one worker; one 128 MiB session fits the budget
#: beside it (144 MiB are left), two sessions at most, one per token, five requests per token and minute.
QUOTA_TOKENS = {name: f"{name}-{secrets.token_hex(16)}" for name in ("carol", "dave", "erin", "frank", "gina", "hank")}
QUOTA_ARGS = (
    "--workers", "1", "--pool-size", "0", "--max-memory", "2G", "--default-memory", "128M",
    "--memory-budget", f"{2048 + 144}M", "--max-sandboxes", "2", "--sessions-per-token", "1",
    "--requests-per-minute", "5",
)  # fmt: skip
#: What a refused call must answer within (a FIFO must not hang it).
PROMPT = 10.0


# --- helpers --------------------------------------------------------------------------------
def named(reply: Reply, status: int, field: str | None = None) -> list[Any]:
    """Asserts ``reply`` is a refusal with ``status`` whose detail names ``field`` (the
    second item of a ``loc``: ["body", "run_timeout"], ["path", "path"], ...); its detail."""
    assert reply.status == status, (status, reply.status, reply.body[:600])
    detail = reply.json()["detail"]
    assert isinstance(detail, list) and detail, detail
    if field is not None:
        locs = [d.get("loc", []) for d in detail]
        assert any(len(loc) > 1 and loc[1] == field for loc in locs), f"{field!r} is not named: {detail}"
    return detail


def host_lines() -> list[bytes]:
    """The lines of the host's /etc/passwd that a reply must never carry."""
    return [line for line in PASSWD.read_bytes().splitlines() if len(line) >= 10]


def leaked(replies: Iterable[Reply]) -> list[str]:
    """The replies that carry the host's /etc/passwd (a line of it, or all of it in base64)."""
    whole = base64.b64encode(PASSWD.read_bytes())
    lines = host_lines()
    return [f"{r.status} {r.body[:200]!r}" for r in replies if whole in r.body or any(line in r.body for line in lines)]


def census(s: Served) -> dict[str, Any]:
    """What the server holds and has run: each token's sessions, the live count, the gauges
    of sessions and memory held, and the runs counted."""
    metrics = s.request("GET", "/metrics", token=ALICE)
    assert metrics.status == 200, metrics
    counted = sorted(
        line
        for line in metrics.body.decode().splitlines()
        if line.startswith(("nsbox_sessions ", "nsbox_memory_held_bytes ", "nsbox_runs_total{"))
    )
    return {
        "healthz": s.request("GET", "/healthz", token=False).json()["sessions"],
        "metrics": counted,
        **{name: session_ids(s, token) for name, token in TOKENS.items()},
    }


def session_ids(s: Served, token: str) -> list[str]:
    reply = s.request("GET", "/v1/sandboxes", token=token)
    assert reply.status == 200, reply
    return sorted(entry["id"] for entry in reply.json()["sandboxes"])


@contextlib.contextmanager
def nothing_created(s: Served) -> Iterator[None]:
    """Asserts that the block created no session, held no memory and ran nothing."""
    before = census(s)
    yield
    assert census(s) == before


def send(
    s: Served,
    method: str,
    path: str,
    body: bytes | Iterable[bytes],
    *,
    token: str = ALICE,
    chunked: bool = False,
    timeout: float = 60.0,
) -> Reply:
    """A request with ``body`` as it is: with Content-Length, or (``chunked``) with
    Transfer-Encoding: chunked from an iterable. A server that answers before taking the
    whole body may close the connection under the sender: its answer is read all the same."""
    connection = http.client.HTTPConnection(s.host, s.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}", **JSON}
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request(method, path, body=body, headers=headers, encode_chunked=chunked)
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """``total`` bytes of a JSON string's content, ``size`` at a time (a generator: no length)."""
    yield b'{"code": "'
    for _ in range(total // size):
        yield b"x" * size
    yield b'"}'


def new_log(s: Served, since: int) -> list[dict[str, Any]]:
    found = []
    for line in s.lines[since:]:
        with contextlib.suppress(ValueError):
            found.append(json.loads(line))
    return found


def logged(s: Served, since: int, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first log line after line ``since`` that ``predicate`` accepts (waits for it)."""
    assert wait_until(lambda: any(predicate(r) for r in new_log(s, since)), 10), new_log(s, since)
    return next(r for r in new_log(s, since) if predicate(r))


def run_in(s: Served, session_id: str, script: str, token: str = ALICE) -> str:
    """Runs a shell script in the session's /workspace; it must succeed. Its stdout."""
    reply = s.request("POST", f"/v1/sandboxes/{session_id}/run", {"args": ["sh", "-c", script]}, token=token)
    assert reply.status == 200, reply
    result = reply.json()
    assert result["status"] == "ok" and result["exit_code"] == 0, result
    return base64.b64decode(result["stdout"]).decode()


def session_routes(session_id: str) -> dict[str, str]:
    """The tables' names for a session's routes that take a body."""
    return {name: f"/v1/sandboxes/{session_id}/{name.lower()}" for name in ("RUN", "EXECUTE", "RUN_CODE")}


def files_of(s: Served, session_id: str) -> dict[str, str]:
    reply = s.request("GET", f"/v1/sandboxes/{session_id}/files")
    assert reply.status == 200, reply
    return {entry["name"]: entry["type"] for entry in reply.json()["entries"]}


# --- the servers ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def audit_log() -> Iterator[Path]:
    """Where the server appends its audit log (JSON lines, as on its stderr)."""
    with tempfile.TemporaryDirectory(prefix="tmp-nsbox-serve-audit-") as folder:
        yield Path(folder) / "audit.log"


@pytest.fixture(scope="module")
def server(audit_log: Path) -> Iterator[Served]:
    require_sandbox()
    with served(*SERVE_ARGS, "--audit-log", str(audit_log), tokens=TOKENS) as s:
        yield s
        assert s.stop() == 0, "the server did not drain cleanly"


@pytest.fixture
def session_id(server: Served) -> Iterator[str]:
    """A session of alice's, destroyed after the test."""
    reply = server.request("POST", "/v1/sandboxes", {})
    assert reply.status == 201, reply
    yield reply.json()["id"]
    server.request("DELETE", f"/v1/sandboxes/{reply.json()['id']}")


@pytest.fixture(scope="module")
def quota_server() -> Iterator[Served]:
    require_sandbox()
    with served(*QUOTA_ARGS, tokens=QUOTA_TOKENS) as s:
        yield s
        assert s.stop() == 0, "the server did not drain cleanly"


# --- malformed JSON, wrong types, unknown fields, values past the maxima ----------------------
def test_malformed_json_is_refused(server: Served, session_id: str) -> None:
    """Bodies that are not JSON (cut short, a trailing comma, bytes that are not UTF-8) and JSON
    that is not an object, on every route that takes one: 422 on the body, nothing made or run."""
    routes = ["/run_code", "/v1/sandboxes", *session_routes(session_id).values()]
    bodies = [b"{bad", b'{"code": "x",}', b"{", b"\xff\xfe{}", b'{"code": "x"} trailing', b"[]", b"null", b'"x"']
    with nothing_created(server):
        for route in routes:
            for body in bodies:
                reply = server.request("POST", route, raw=body, headers=JSON)
                detail = named(reply, 422)
                assert all(d["loc"][0] == "body" for d in detail), (route, body, detail)
    assert run_in(server, session_id, "echo fine") == "fine\n", "the session was not harmed"


WRONG_TYPES: list[tuple[str, dict[str, Any], str]] = [
    ("/run_code", {"code": 5}, "code"),
    ("/run_code", {"code": "print(1)", "run_timeout": "x"}, "run_timeout"),
    ("/run_code", {"code": "print(1)", "compile_timeout": [1]}, "compile_timeout"),
    ("/run_code", {"code": "print(1)", "memory_limit_MB": "lots"}, "memory_limit_MB"),
    ("/run_code", {"code": "print(1)", "memory_limit_MB": 1.5}, "memory_limit_MB"),
    ("/run_code", {"code": "print(1)", "stdin": 5}, "stdin"),
    ("/run_code", {"code": "print(1)", "files": ["main.py"]}, "files"),
    ("/run_code", {"code": "print(1)", "files": {"a": 5}}, "files"),
    ("/run_code", {"code": "print(1)", "fetch_files": "a"}, "fetch_files"),
    ("/run_code", {"language": "python"}, "code"),
    ("/v1/sandboxes", {"memory": [1]}, "memory"),
    ("/v1/sandboxes", {"memory": 1.5}, "memory"),
    ("/v1/sandboxes", {"cpus": "x"}, "cpus"),
    ("/v1/sandboxes", {"pids": "many"}, "pids"),
    ("/v1/sandboxes", {"timeout": {}}, "timeout"),
    ("/v1/sandboxes", {"env": {"A": 1}}, "env"),
    ("/v1/sandboxes", {"env": ["A=1"]}, "env"),
    ("/v1/sandboxes", {"rootfs": 5}, "rootfs"),
    ("RUN", {"args": "ls"}, "args"),
    ("RUN", {"args": []}, "args"),
    ("RUN", {"args": ["ls", 5]}, "args"),
    ("RUN", {"args": ["ls"], "timeout": "x"}, "timeout"),
    ("RUN", {"args": ["ls"], "stdin": 5}, "stdin"),
    ("RUN", {"args": ["ls"], "env": ["A=1"]}, "env"),
    ("RUN", {"args": ["ls"], "cwd": None}, "cwd"),
    ("RUN", {}, "args"),
    ("EXECUTE", {"code": 5}, "code"),
    ("EXECUTE", {"code": "1", "want_result": "maybe"}, "want_result"),
    ("RUN_CODE", {"code": 5}, "code"),
    ("RUN_CODE", {"code": "1", "files": ["a"]}, "files"),
    ("RUN_CODE", {"code": "1", "memory": [1]}, "memory"),
    ("RUN_CODE", {"code": "1", "timeout": "x"}, "timeout"),
]


def test_wrong_types_are_refused_naming_the_field(server: Served, session_id: str) -> None:
    """A field of the wrong type (or a required one missing): 422 naming it, nothing made or run."""
    routes = session_routes(session_id)
    with nothing_created(server):
        for route, body, field in WRONG_TYPES:
            named(server.request("POST", routes.get(route, route), body), 422, field)
    assert run_in(server, session_id, "echo fine") == "fine\n"


#: Fields a request must not have: most of them would bind a host path or change the sandbox's policy.
UNKNOWN_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("/run_code", {"code": "print(1)", "bogus": 1}, "bogus"),
    ("/run_code", {"code": "print(1)", "mounts": ["/etc:/host-etc"]}, "mounts"),
    ("/run_code", {"code": "print(1)", "Code": "print(2)"}, "Code"),
    ("/v1/sandboxes", {"mounts": [{"source": "/", "target": "/host", "writable": True}]}, "mounts"),
    ("/v1/sandboxes", {"mounts": ["/:/host"]}, "mounts"),
    ("/v1/sandboxes", {"audit_log": "AUDIT"}, "audit_log"),
    ("/v1/sandboxes", {"binds": ["/etc"]}, "binds"),
    ("/v1/sandboxes", {"network": "host"}, "network"),
    ("/v1/sandboxes", {"seccomp": "none"}, "seccomp"),
    ("/v1/sandboxes", {"cgroups": False}, "cgroups"),
    ("/v1/sandboxes", {"memory": "64M", "uid": 0}, "uid"),
    ("RUN", {"args": ["id"], "user": "root"}, "user"),
    ("RUN", {"args": ["id"], "mounts": ["/:/host"]}, "mounts"),
    ("EXECUTE", {"code": "1", "audit_log": "AUDIT"}, "audit_log"),
    ("RUN_CODE", {"code": "1", "fetch_files": ["/etc/passwd"]}, "fetch_files"),
    ("RUN_CODE", {"code": "1", "mounts": ["/:/host"]}, "mounts"),
]


def test_unknown_fields_are_refused_naming_them(server: Served, session_id: str) -> None:
    """An unknown field (a host bind, an audit log path, a policy switch, a typo): 422 naming
    it, never ignored; nothing made or run, and the audit log path named is not created."""
    routes = session_routes(session_id)
    with tempfile.TemporaryDirectory(prefix="tmp-nsbox-serve-") as folder:
        audit = os.path.join(folder, "requested-audit.log")
        with nothing_created(server):
            for route, body, field in UNKNOWN_FIELDS:
                sent = {k: audit if v == "AUDIT" else v for k, v in body.items()}
                detail = named(server.request("POST", routes.get(route, route), sent), 422, field)
                assert any(d.get("type") == "extra_forbidden" for d in detail), detail
        assert os.listdir(folder) == []
    assert run_in(server, session_id, "echo fine") == "fine\n"


PAST_THE_MAXIMA: list[tuple[str, dict[str, Any], str]] = [
    ("/run_code", {"code": "print(1)", "run_timeout": MAX_TIMEOUT + 1}, "run_timeout"),
    ("/run_code", {"code": "print(1)", "run_timeout": 0}, "run_timeout"),
    ("/run_code", {"code": "print(1)", "run_timeout": -1}, "run_timeout"),
    ("/run_code", {"code": "print(1)", "run_timeout": 1e308}, "run_timeout"),
    ("/run_code", {"code": "print(1)", "compile_timeout": 10_000}, "compile_timeout"),
    ("/run_code", {"code": "print(1)", "memory_limit_MB": MAX_MEMORY_MB + 1}, "memory_limit_MB"),
    ("/run_code", {"code": "print(1)", "memory_limit_MB": 10**30}, "memory_limit_MB"),
    ("/v1/run_code_batch", {"requests": [{"code": "1"}, {"code": "1", "run_timeout": 999}]}, "run_timeout"),
    ("/v1/sandboxes", {"memory": "512M"}, "memory"),
    ("/v1/sandboxes", {"memory": (MAX_MEMORY_MB + 1) * MiB}, "memory"),
    ("/v1/sandboxes", {"memory": "64G"}, "memory"),
    ("/v1/sandboxes", {"memory": -1}, "memory"),
    ("/v1/sandboxes", {"timeout": MAX_TIMEOUT + 1}, "timeout"),
    ("/v1/sandboxes", {"timeout": 0}, "timeout"),
    ("/v1/sandboxes", {"cpus": 3}, "cpus"),
    ("/v1/sandboxes", {"pids": 100_000}, "pids"),
    ("/v1/sandboxes", {"workspace_size": "100G"}, "workspace_size"),
    ("RUN", {"args": ["true"], "timeout": MAX_TIMEOUT + 1}, "timeout"),
    ("RUN", {"args": ["true"], "timeout": -5}, "timeout"),
    ("EXECUTE", {"code": "1", "timeout": 10_000}, "timeout"),
    ("RUN_CODE", {"code": "1", "timeout": MAX_TIMEOUT + 1}, "timeout"),
]
#: The same, as raw JSON: the values json.dumps would not write but Python's parser takes.
NOT_FINITE: list[tuple[str, bytes, str]] = [
    ("/run_code", b'{"code": "print(1)", "run_timeout": NaN}', "run_timeout"),
    ("/run_code", b'{"code": "print(1)", "run_timeout": Infinity}', "run_timeout"),
    ("/run_code", b'{"code": "print(1)", "compile_timeout": NaN}', "compile_timeout"),
    ("/v1/sandboxes", b'{"timeout": NaN}', "timeout"),
    ("/v1/sandboxes", b'{"timeout": Infinity}', "timeout"),
    ("/v1/sandboxes", b'{"cpus": NaN}', "cpus"),
    ("/v1/sandboxes", b'{"cpus": Infinity}', "cpus"),
    ("RUN", b'{"args": ["true"], "timeout": NaN}', "timeout"),
    ("RUN", b'{"args": ["true"], "timeout": Infinity}', "timeout"),
    ("RUN_CODE", b'{"code": "1", "timeout": NaN}', "timeout"),
]


def test_values_past_the_servers_maxima_are_refused_naming_the_field(server: Served, session_id: str) -> None:
    """run_timeout past --max-timeout, memory_limit_MB past --max-memory, a session's memory,
    timeout, cpus, pids or workspace past the server's maxima, a run's timeout past it, and
    NaN or Infinity for any of them: 422 naming the field; nothing made, nothing run."""
    require_run_code()  # the server runs these programs with run_code: own mode refuses it
    routes = session_routes(session_id)
    with nothing_created(server):
        for route, body, field in PAST_THE_MAXIMA:
            named(server.request("POST", routes.get(route, route), body), 422, field)
        for route, raw, field in NOT_FINITE:
            named(server.request("POST", routes.get(route, route), raw=raw, headers=JSON), 422, field)
    # the premise: at the maxima themselves, the same requests are served
    at_most = {"code": "print(1)", "run_timeout": MAX_TIMEOUT, "memory_limit_MB": MAX_MEMORY_MB}
    reply = server.request("POST", "/run_code", at_most)
    assert reply.status == 200 and reply.json()["status"] == "Success", reply
    reply = server.request("POST", f"/v1/sandboxes/{session_id}/run", {"args": ["true"], "timeout": MAX_TIMEOUT})
    assert reply.status == 200 and reply.json()["status"] == "ok", reply


ROOTFS_FOLDERS = ["/", "/etc", "/tmp/root", "..", "../..", "../../etc", ".", ".hidden", "a/b", "", "./default"]


def test_a_session_spec_names_no_host_folder(server: Served) -> None:
    """A session's rootfs is the name of a stored root, never a host folder ("/", "/etc", a
    relative path, "..") and memory past the maximum is refused: 422 naming the field, and
    no session made (nor any memory of the budget held)."""
    with nothing_created(server):
        for rootfs in ROOTFS_FOLDERS:
            named(server.request("POST", "/v1/sandboxes", {"rootfs": rootfs}), 422, "rootfs")
            named(server.request("POST", "/v1/sandboxes", {"rootfs": rootfs, "memory": "64M"}), 422, "rootfs")
        named(server.request("POST", "/v1/sandboxes", {"memory": "1G", "cpus": 1}), 422, "memory")


# --- oversize bodies ------------------------------------------------------------------------
def test_an_oversize_body_is_refused_with_413(server: Served, session_id: str) -> None:
    """A 2 MiB body with its Content-Length, past --max-body 1M, on every route that takes a
    body: 413 before it is read; the file it would have been is not written; the server
    answers as before afterwards."""
    require_run_code()  # the server runs these programs with run_code: own mode refuses it
    big = b'{"code": "' + b"x" * (2 * MiB) + b'"}'
    routes = [
        ("POST", "/run_code"),
        ("POST", "/v1/sandboxes"),
        ("POST", f"/v1/sandboxes/{session_id}/run"),
        ("POST", f"/v1/sandboxes/{session_id}/execute"),
        ("PUT", f"/v1/sandboxes/{session_id}/files/big"),
    ]
    with nothing_created(server):
        for method, route in routes:
            named(send(server, method, route, big), 413)
    assert "big" not in files_of(server, session_id)
    assert server.request("GET", "/healthz", token=False).status == 200
    reply = server.request("POST", "/run_code", {"code": "print(6 * 7)"})
    assert reply.status == 200 and reply.json()["run_result"]["stdout"] == "42\n", reply


def test_an_oversize_chunked_body_is_refused_with_413(server: Served, session_id: str) -> None:
    """A body without a length (Transfer-Encoding: chunked) that grows past --max-body: 413
    when it passes the cap, on every route; the file it would have been is not written; a
    chunked body under the cap is taken (the premise), and the server answers afterwards."""
    require_run_code()  # the server runs these programs with run_code: own mode refuses it
    routes = [
        ("POST", "/run_code"),
        ("POST", "/v1/sandboxes"),
        ("POST", f"/v1/sandboxes/{session_id}/run"),
        ("POST", f"/v1/sandboxes/{session_id}/execute"),
        ("PUT", f"/v1/sandboxes/{session_id}/files/big"),
    ]
    failures = []
    with nothing_created(server):
        for method, route in routes:
            reply = send(server, method, route, chunks(3 * MiB), chunked=True)
            if reply.status != 413:
                failures.append(f"{method} {route}: {reply.status} {reply.body[:200]!r}")
    assert "big" not in files_of(server, session_id)
    small = send(server, "PUT", f"/v1/sandboxes/{session_id}/files/small", chunks(256 * 1024), chunked=True)
    assert small.status == 204, small
    reply = server.request("GET", f"/v1/sandboxes/{session_id}/files/small")
    assert reply.status == 200 and reply.body == b"".join(chunks(256 * 1024)), reply.status
    program = send(server, "POST", "/run_code", [b'{"code": ', b'"print(6 * 7)"}'], chunked=True)
    assert program.status == 200 and program.json()["run_result"]["stdout"] == "42\n", program
    assert failures == [], "not refused with 413:\n" + "\n".join(failures)


# --- the files API of a session ---------------------------------------------------------------
def escapes_to(target: Path) -> list[str]:
    """URL paths (after .../files/) that, followed as a broken server might (on the host, or
    from the workspace at any depth up to 12), land on ``target``: raw, and percent-encoded."""
    relative = str(target).lstrip("/")
    raw = [
        "../" * 12 + relative,
        "a/" + "../" * 13 + relative,
        "/" + relative,  # .../files//etc/passwd: an absolute path
        "/workspace/" + "../" * 12 + relative,
        "/proc/self/root/" + relative,
        "/proc/1/root/" + relative,
    ]
    encoded = [
        "%2e%2e/" * 12 + relative,
        ".%2E/" * 12 + relative,
        "..%2f" * 12 + relative.replace("/", "%2f"),
        "%2F" + relative.replace("/", "%2F"),
    ]
    return raw + encoded


def test_paths_leaving_the_workspace_are_refused(server: Served, session_id: str, host_tmp: Any) -> None:
    """``..`` paths (raw, as http.client sends them, and percent-encoded), absolute paths
    outside /workspace, /proc/*/root: GET, PUT and DELETE of a file and the listing are
    refused with 422 naming the path. The host's /etc/passwd appears in no reply and keeps
    its bytes; a host canary is neither written nor removed; the workspace keeps its file."""
    canary_dir = host_tmp("canary", 0o777)
    canary = canary_dir / "canary"
    canary.write_bytes(b"HOST-CANARY\n")
    os.chmod(canary, 0o666)
    files = f"/v1/sandboxes/{session_id}/files"
    run_in(server, session_id, "mkdir -p a && echo KEEP > keep.txt")
    before = {p: fingerprint(p) for p in (PASSWD, canary, canary_dir)}
    passwd = PASSWD.read_bytes()
    replies: list[Reply] = []
    with nothing_created(server), restoring(PASSWD), restoring(canary):
        for path in escapes_to(PASSWD):
            replies.append(server.request("GET", f"{files}/{path}"))
            named(replies[-1], 422, "path")
            # the host's /etc/passwd, written with its own bytes: harmless if it got through
            named(send(server, "PUT", f"{files}/{path}", passwd), 422, "path")
        for path in escapes_to(canary) + escapes_to(canary_dir / "new"):
            named(send(server, "PUT", f"{files}/{path}", b"PWNED\n"), 422, "path")
            named(server.request("DELETE", f"{files}/{path}"), 422, "path")
        for path in escapes_to(canary_dir):
            named(server.request("DELETE", f"{files}/{path}?recursive=true"), 422, "path")
        for path in ["..", "../..", "/etc", "/", "/workspace/..", "%2e%2e", "/proc/self/root/etc", "/tmp"]:
            replies.append(server.request("GET", f"{files}?path={path}"))
            named(replies[-1], 422, "path")
        # nor the workspace itself, nor a name with a NUL byte
        for path in ["", ".", "/workspace", "/workspace/", "%2e", "keep.txt%00/../../etc/passwd"]:
            named(server.request("DELETE", f"{files}/{path}?recursive=true"), 422, "path")
            named(server.request("GET", f"{files}/{path}"), 422, "path")
        # permission bits only: not setuid, not out of range
        for mode in (0o4755, 0o2755, 0o1777, 0o10000, -1):
            detail = named(send(server, "PUT", f"{files}/m?mode={mode}", b"#!/bin/sh\n"), 422)
            assert any(d["loc"][-1] == "mode" for d in detail), detail
        after = {p: fingerprint(p) for p in (PASSWD, canary, canary_dir)}
    assert after == before
    assert sorted(os.listdir(canary_dir)) == ["canary"]
    assert leaked(replies) == []
    assert files_of(server, session_id) == {"a": "dir", "keep.txt": "file"}
    # the premise: the same routes reach a file inside
    reply = server.request("GET", f"{files}/keep.txt")
    assert (reply.status, reply.body) == (200, b"KEEP\n")
    assert server.request("GET", f"{files}//workspace/keep.txt").body == b"KEEP\n"
    assert send(server, "PUT", f"{files}/a/new.txt", b"NEW").status == 204
    assert server.request("DELETE", f"{files}/a/new.txt").status == 204


def test_symlinks_planted_by_the_sandbox_are_refused(server: Served, session_id: str, host_tmp: Any) -> None:
    """The sandbox plants symlinks in its workspace: to /etc/passwd, to /etc, to /, to a host
    canary and its folder (paths that exist only on the host), to a directory inside. Reading,
    listing, writing and removing through any of them is refused with 422 naming the path;
    removing a link itself may be refused or remove just the link. No reply carries the
    host's /etc/passwd, the canary keeps its bytes, nothing appears beside it, the links and
    the files they point at inside are as they were, and the session still works."""
    canary_dir = host_tmp("canary", 0o777)
    canary = canary_dir / "canary"
    canary.write_bytes(b"HOST-CANARY\n")
    os.chmod(canary, 0o666)
    (canary_dir / "sub").mkdir()
    (canary_dir / "sub" / "f").write_bytes(b"HOST-SUB\n")
    links = {
        "p": "/etc/passwd",
        "etc": "/etc",
        "root": "/",
        "hc": str(canary),
        "hd": str(canary_dir),
        "inner": "realdir",  # points inside: refused all the same (any symlink)
        "m": "/proc/self/root",
    }
    plant = " && ".join(f"ln -s {target} {name}" for name, target in links.items())
    run_in(server, session_id, f"mkdir -p realdir/sub && echo REAL > realdir/f && {plant}")
    inside = "for l in *; do echo $l $(readlink $l); done; ls -lA --time-style=full-iso . realdir; cat realdir/f"
    inside_before = run_in(server, session_id, inside)
    files = f"/v1/sandboxes/{session_id}/files"
    reads = ["p", "etc/passwd", "root/etc/passwd", "hc", "hd/canary", "inner/f", "m/etc/passwd", "/workspace/p"]
    reads += [f"m{canary}", "etc/shadow", "/workspace/etc/passwd"]
    lists = ["etc", "root", "root/etc", "hd", "inner", "m", "m/etc", "/workspace/etc"]
    writes = ["hc", "hd/canary", "hd/new", "hd/newdir/x", "inner/f", "inner/new", f"m{canary}", "root/tmp/x"]
    removes = ["hd/canary", "inner/f", "etc/passwd", "root/etc/passwd", "m/etc/passwd", f"m{canary}"]
    passwd = PASSWD.read_bytes()
    host_paths = (PASSWD, canary, canary_dir, canary_dir / "sub", canary_dir / "sub" / "f")
    host_before = {p: fingerprint(p) for p in host_paths}
    replies: list[Reply] = []
    with nothing_created(server), restoring(PASSWD), restoring(canary):
        for path in reads:
            replies.append(server.request("GET", f"{files}/{path}"))
            named(replies[-1], 422, "path")
        for path in lists:
            replies.append(server.request("GET", f"{files}?path={path}"))
            named(replies[-1], 422, "path")
        for path in writes:
            named(send(server, "PUT", f"{files}/{path}", b"PWNED\n"), 422, "path")
        for path in ("p", "etc/passwd", "root/etc/passwd", "m/etc/passwd"):  # with its own bytes: harmless
            named(send(server, "PUT", f"{files}/{path}", passwd), 422, "path")
        for path in removes:
            named(server.request("DELETE", f"{files}/{path}"), 422, "path")
        for path in ("hd/sub", "inner/sub"):  # never recursive through root, etc or m: a bug would be the host's
            named(server.request("DELETE", f"{files}/{path}?recursive=true"), 422, "path")
        host_after = {p: fingerprint(p) for p in host_paths}
    assert host_after == host_before
    assert sorted(os.listdir(canary_dir)) == ["canary", "sub"]
    assert leaked(replies) == []
    assert run_in(server, session_id, inside) == inside_before
    # a link itself (its last component, also with a trailing slash, also recursive): refused,
    # or just the link removed; never its target (recursive only where the target is ours)
    for path in ("p", "hc", "inner", "etc/", "hd/?recursive=true", "inner/?recursive=true"):
        name = path.split("/")[0].split("?")[0]
        run_in(server, session_id, f"rm -f {name} && ln -s {links[name]} {name}")
        reply = server.request("DELETE", f"{files}/{path}")
        still = run_in(server, session_id, f"test -L {name} && echo link || echo gone").strip()
        assert (reply.status, still) in ((204, "gone"), (422, "link")), (path, reply, still)
    assert run_in(server, session_id, "cat realdir/f; ls realdir") == "REAL\nf\nsub\n"
    assert {p: fingerprint(p) for p in host_paths} == host_before
    # the premise: the same routes reach the directory the links point at
    assert server.request("GET", f"{files}/realdir/f").body == b"REAL\n"
    assert [e["name"] for e in server.request("GET", f"{files}?path=realdir").json()["entries"]] == ["f", "sub"]


def test_a_fifo_planted_by_the_sandbox_never_hangs_a_call(server: Served, session_id: str) -> None:
    """The sandbox makes a FIFO in its workspace (a read of it would block until a writer
    comes): GET of it is refused with a 4xx at once; PUT over it answers at once (refused,
    or the FIFO replaced); the listing shows it; other calls are served meanwhile."""
    run_in(server, session_id, "mkfifo fifo")
    files = f"/v1/sandboxes/{session_id}/files"
    assert files_of(server, session_id) == {"fifo": "other"}
    try:
        started = time.monotonic()
        reply = server.request("GET", f"{files}/fifo", timeout=PROMPT)
        named(reply, 422, "path")
        assert time.monotonic() - started < 5
        reply = send(server, "PUT", f"{files}/fifo", b"x", timeout=PROMPT)
        assert reply.status in (204, 422), reply
        assert time.monotonic() - started < 5
    except TimeoutError:  # a blocked open: give it a writer and a reader, then fail
        run_in(server, session_id, "exec 3<>/workspace/fifo; sleep 1")
        pytest.fail("a call on a FIFO hangs")
    assert run_in(server, session_id, "echo fine") == "fine\n"


# --- /run_code's files and fetch_files ------------------------------------------------------
def test_run_code_file_names_stay_in_the_programs_directory(server: Served) -> None:
    """``files`` and ``fetch_files`` name files beside the program: ``..``, absolute paths, the
    directory itself, an empty name or a NUL byte are refused with 422 naming the field,
    before anything runs; no file of those names appears on the host."""
    name = f"nsbox-serve-{secrets.token_hex(8)}"
    content = base64.b64encode(b"PLANTED\n").decode()
    bad_names = [f"../{name}", f"../../../../../../etc/{name}", f"/etc/{name}", f"/tmp/{name}", f"a/../../{name}"]
    bad_names += ["..", ".", "", "/", "a\0b", f"/proc/self/root/etc/{name}"]
    fetches = ["../../etc/passwd", "/etc/passwd", "..", "a/../../etc/passwd", "/proc/1/root/etc/passwd", "", "x\0"]
    replies = []
    with nothing_created(server):
        for bad in bad_names:
            named(server.request("POST", "/run_code", {"code": "print(1)", "files": {bad: content}}), 422, "files")
            body = {"code": "print(1)", "files": {"ok.txt": content, bad: content}, "fetch_files": ["ok.txt"]}
            named(server.request("POST", "/run_code", body), 422, "files")
        for bad in fetches:
            replies.append(server.request("POST", "/run_code", {"code": "print(1)", "fetch_files": [bad]}))
            named(replies[-1], 422, "fetch_files")
            body = {"code": "print(1)", "fetch_files": ["ok.txt", bad], "files": {"ok.txt": content}}
            replies.append(server.request("POST", "/run_code", body))
            named(replies[-1], 422, "fetch_files")
        named(server.request("POST", "/run_code", {"code": "1", "files": {"a.txt": "not base64!"}}), 422, "files")
    for where in ("/etc", "/tmp", "/", os.getcwd()):
        assert not os.path.lexists(os.path.join(where, name)), where
    assert leaked(replies) == []
    # the premise: a name beside the program is written, and fetched back
    body = {"code": "print(open('in.txt').read())", "files": {"in.txt": content}, "fetch_files": ["in.txt"]}
    reply = server.request("POST", "/run_code", body)
    assert reply.status == 200 and reply.json()["run_result"]["stdout"] == "PLANTED\n\n", reply
    assert reply.json()["files"] == {"in.txt": content}


def test_a_session_programs_names_and_memory_are_checked(server: Served, session_id: str) -> None:
    """run_code in a session: file names that leave the program's directory, contents that
    are not base64, and a memory past the server's --max-memory (1G; 64G) are refused with
    422 naming the field (``files``, ``memory``), as /run_code refuses them, before anything
    runs; the session lives on and its programs run."""
    require_run_code()  # the server runs these programs with run_code: own mode refuses it
    route = f"/v1/sandboxes/{session_id}/run_code"
    content = base64.b64encode(b"X").decode()
    failures = []
    for body, field in (
        ({"code": "1", "files": {"../x": content}}, "files"),
        ({"code": "1", "files": {"/etc/x": content}}, "files"),
        ({"code": "1", "files": {"a/../../x": content}}, "files"),
        ({"code": "1", "files": {"a.txt": "not base64!"}}, "files"),
        ({"code": "1", "memory": f"{MAX_MEMORY_MB + 1}M"}, "memory"),
        ({"code": "1", "memory": "1G"}, "memory"),
        ({"code": "1", "memory": "64G"}, "memory"),
    ):
        reply = server.request("POST", route, body)
        try:
            named(reply, 422, field)
        except AssertionError:
            failures.append(f"{body}: {reply.status} {reply.body[:200]!r}")
    reply = server.request("POST", route, {"code": "print(6 * 7)", "memory": "64M", "files": {"in.txt": content}})
    alive = reply.status == 200 and base64.b64decode(reply.json()["stdout"]) == b"42\n"
    assert failures == [] and alive, "\n".join(
        [*failures, f"the session afterwards: {reply.status} {reply.body[:200]!r}"]
    )


def test_fetch_files_never_follows_what_the_program_made(server: Served) -> None:
    """The program makes the names it was asked to give back into a symlink to /etc/passwd, a
    file under a symlinked directory, and a FIFO: they are not fetched (the answer promptly
    says so by leaving them out; the program's own result and a real file are answered), and
    no reply carries the host's /etc/passwd."""
    code = (
        "import os\n"
        "os.symlink('/etc/passwd', 'out.txt')\n"
        "os.symlink('/etc', 'etc')\n"
        "os.mkfifo('fifo')\n"
        "open('real.txt', 'w').write('REAL')\n"
        "print('ran')\n"
    )
    replies = []
    for fetch in (["out.txt"], ["etc/passwd"], ["fifo"], ["out.txt", "etc/passwd", "fifo", "real.txt"]):
        started = time.monotonic()
        reply = server.request("POST", "/run_code", {"code": code, "fetch_files": fetch}, timeout=60)
        replies.append(reply)
        assert time.monotonic() - started < 30
        assert reply.status == 200, (fetch, reply.status, reply.body[:300])
        answer = reply.json()
        assert answer["status"] == "Success" and answer["run_result"]["stdout"] == "ran\n", answer
        expected = {"real.txt": base64.b64encode(b"REAL").decode()} if "real.txt" in fetch else {}
        assert answer["files"] == expected, (fetch, answer["files"])
    assert leaked(replies) == []


# --- tokens -----------------------------------------------------------------------------------
def bad_authorizations() -> list[dict[str, str]]:
    return [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer    "},
        {"Authorization": f"Bearer {ALICE[:-1]}"},  # a prefix of a real token
        {"Authorization": f"Bearer {ALICE[:16]}"},
        {"Authorization": f"Bearer {ALICE}x"},  # a real token and more
        {"Authorization": f"Bearer {ALICE.upper()}"},
        {"Authorization": f"Bearer {'w' * 40}"},
        {"Authorization": f"Bearer {ALICE},{BOB}"},
        {"Authorization": f"Basic {ALICE}"},
        {"Authorization": f"Token {ALICE}"},
        {"Authorization": ALICE},
        {"Authorization": f"Bearer{ALICE}"},
    ]


def test_a_missing_or_wrong_token_is_refused_with_401(server: Served, session_id: str) -> None:
    """No Authorization header, an empty one, "Bearer" with no token, a prefix of a real
    token, a real token with more after it, another scheme: 401 with WWW-Authenticate: Bearer,
    on every route but /healthz; nothing made, run or read. The scheme is case-insensitive
    (``bearer``, as RFC 7235 has it), and /healthz needs no token."""
    routes: list[tuple[str, str, Any]] = [
        ("GET", "/v1/sandboxes", None),
        ("POST", "/v1/sandboxes", {}),
        ("POST", "/run_code", {"code": "open('/workspace/ran', 'w')"}),
        ("POST", "/v1/run_code_batch", {"requests": [{"code": "print(1)"}]}),
        ("GET", "/metrics", None),
        ("GET", f"/v1/sandboxes/{session_id}", None),
        ("DELETE", f"/v1/sandboxes/{session_id}", None),
        ("POST", f"/v1/sandboxes/{session_id}/run", {"args": ["touch", "/workspace/ran"]}),
        ("POST", f"/v1/sandboxes/{session_id}/execute", {"code": "open('/workspace/ran', 'w')"}),
        ("POST", f"/v1/sandboxes/{session_id}/run_code", {"code": "open('/workspace/ran', 'w')"}),
        ("GET", f"/v1/sandboxes/{session_id}/files", None),
        ("GET", f"/v1/sandboxes/{session_id}/files/secret.txt", None),
        ("PUT", f"/v1/sandboxes/{session_id}/files/ran", None),
        ("DELETE", f"/v1/sandboxes/{session_id}/files/secret.txt", None),
    ]
    run_in(server, session_id, "echo SECRET > secret.txt")
    with nothing_created(server):
        for headers in bad_authorizations():
            for method, route, body in routes:
                reply = server.request(method, route, body, token=False, headers=headers)
                named(reply, 401, "authorization")
                assert reply.headers.get("www-authenticate") == "Bearer", reply.headers
                assert b"SECRET" not in reply.body
    assert files_of(server, session_id) == {"secret.txt": "file"}
    healthz = server.request("GET", "/healthz", token=False)
    assert healthz.status == 200 and healthz.json()["ok"] is True
    for scheme in ("bearer", "BEARER", "Bearer"):
        reply = server.request("GET", "/v1/sandboxes", token=False, headers={"Authorization": f"{scheme} {ALICE}"})
        assert reply.status == 200 and session_id in str(reply.json()), (scheme, reply)


def test_no_token_is_refused_before_the_body_is_read(server: Served) -> None:
    """Authentication comes first: a request without a valid token is refused 401 whatever
    its body (malformed JSON, wrong types), so an anonymous client learns nothing of the
    schema and makes the server parse nothing; a refusal of a bad body sent with a token is
    logged under that token's name."""
    for body in (b"{bad", b'{"code": 5}', b"[]", b'{"code": "print(1)", "bogus": 1}'):
        for headers in ({}, {"Authorization": f"Bearer {'w' * 40}"}):
            reply = server.request("POST", "/run_code", raw=body, token=False, headers={**JSON, **headers})
            named(reply, 401, "authorization")
    since = len(server.lines)
    named(server.request("POST", "/v1/sandboxes", raw=b"{bad", headers=JSON), 422)
    line = logged(server, since, lambda r: r.get("path") == "/v1/sandboxes" and r.get("status") == 422)
    assert line["token"] == "alice", line


def test_the_log_names_the_token_never_the_token_itself(server: Served, session_id: str, audit_log: Path) -> None:
    """Each request and refusal is logged (stderr and the --audit-log file) with the token's
    NAME: alice's as alice, bob's as bob, a wrong token's as none, with status and why. No
    line anywhere holds a token: neither a real one nor the wrong ones presented."""
    wrong = f"wrong-{secrets.token_hex(16)}"
    since = len(server.lines)
    assert server.request("GET", f"/v1/sandboxes/{session_id}", token=ALICE).status == 200
    named(server.request("GET", f"/v1/sandboxes/{session_id}", token=BOB), 404, "id")
    named(server.request("GET", "/v1/sandboxes", token=wrong), 401, "authorization")
    named(server.request("GET", "/v1/sandboxes", token=ALICE[:-1]), 401, "authorization")
    named(server.request("POST", "/run_code", {"code": "1", "run_timeout": 999}, token=BOB), 422, "run_timeout")
    alice = logged(server, since, lambda r: r.get("path") == f"/v1/sandboxes/{session_id}" and r["status"] == 200)
    bob = logged(server, since, lambda r: r.get("path") == f"/v1/sandboxes/{session_id}" and r["status"] == 404)
    refused = logged(server, since, lambda r: r.get("status") == 401)
    timeout = logged(server, since, lambda r: r.get("path") == "/run_code" and r["status"] == 422)
    assert (alice["event"], alice["token"], alice["method"]) == ("request", "alice", "GET"), alice
    assert (bob["event"], bob["token"]) == ("refused", "bob") and session_id in bob["why"], bob
    assert refused["token"] is None and refused["event"] == "refused" and "token" in refused["why"], refused
    assert timeout["token"] == "bob" and "run_timeout" in timeout["why"], timeout
    audit = audit_log.read_text(encoding="utf-8", errors="replace")
    assert f'"path":"/v1/sandboxes/{session_id}"' in audit and '"token":"bob"' in audit
    stderr = "\n".join(server.lines)
    for secret in (ALICE, BOB, wrong, ALICE[:-1], ALICE[6:], BOB[4:]):
        assert secret not in stderr, "a token is in the server's log"
        assert secret not in audit, "a token is in the audit log"


def start_refused(*args: str, tokens: str | None = None, mode: int = 0o600, link: bool = False) -> str:
    """Runs ``nsbox serve --port 0 ARGS`` (with a token file of ``tokens``, its mode, or a
    symlink to it); asserts it refuses to start (exit 125, at once); its stderr."""
    with tempfile.TemporaryDirectory(prefix="tmp-nsbox-serve-") as folder:
        argv = [NSBOX_CLI, "serve", "--port", "0", "--workers", "1", "--pool-size", "0", *args]
        if tokens is not None:
            path = os.path.join(folder, "tokens")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
                file.write(tokens)
            os.chmod(path, mode)
            if link:
                os.symlink(path, os.path.join(folder, "link"))
                path = os.path.join(folder, "link")
            argv += ["--token-file", path]
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.terminate()  # it started: stop it (by its pid), then fail
            _, stderr = process.communicate(timeout=90)
            pytest.fail(f"nsbox serve {' '.join(args)} started: {stderr.decode()[-500:]}")
    text = stderr.decode("utf-8", "replace")
    assert process.returncode == 125, (process.returncode, text)
    assert "listening on" not in text, text
    return text


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.com"])
def test_serving_beyond_loopback_needs_a_token_file(host: str) -> None:
    """Without --token-file, nsbox serve refuses to listen on an address other hosts reach
    (every request would be anonymous): exit 125 before it listens, naming --token-file."""
    assert "--token-file" in start_refused("--host", host)


def test_a_weak_token_file_is_refused_at_start() -> None:
    """A token file readable by group or others (like ssh's keys), a symlink to one, a token
    shorter than 16 characters, a name given twice, a file with no token: exit 125, saying why.
    (The same file, mode 600 with long tokens, is what the served fixtures start with.)"""
    good = f"{ALICE} alice\n"
    for mode in (0o644, 0o640, 0o604, 0o660):
        text = start_refused(tokens=good, mode=mode)
        assert "token_file" in text and "readable by others" in text, (oct(mode), text)
    assert "token_file" in start_refused(tokens=good, link=True)
    text = start_refused(tokens=f"{ALICE} alice\nshort-token bob\n")
    assert "line 2" in text and "16 characters" in text, text
    text = start_refused(tokens=f"{ALICE} alice\n{BOB} alice\n")
    assert "line 2" in text and "twice" in text, text
    assert "no token" in start_refused(tokens="# nothing here\n\n")


# --- another token's session -------------------------------------------------------------------
def test_another_tokens_session_is_not_found(server: Served, session_id: str) -> None:
    """bob names alice's session id in every session route: 404, the very answer a made-up
    id gets (nothing tells bob the id exists); bob's listing does not show it; nothing bob
    asked is done to it, and it works for alice afterwards."""
    run_in(server, session_id, "echo MINE > mine.txt")
    made_up = secrets.token_urlsafe(16)
    calls: list[tuple[str, str, Any, bytes | None]] = [
        ("GET", "", None, None),
        ("DELETE", "", None, None),
        ("POST", "/run", {"args": ["touch", "/workspace/bob-was-here"]}, None),
        ("POST", "/execute", {"code": "open('/workspace/bob-was-here', 'w')"}, None),
        ("POST", "/run_code", {"code": "open('/workspace/bob-was-here', 'w')"}, None),
        ("POST", "/packages", {"packages": ["six"]}, None),
        ("GET", "/files", None, None),
        ("GET", "/files/mine.txt", None, None),
        ("PUT", "/files/bob-was-here", None, b"BOB"),
        ("PUT", "/files/mine.txt", None, b"BOB"),
        ("DELETE", "/files/mine.txt", None, None),
    ]
    with nothing_created(server):
        for method, rest, body, raw in calls:
            theirs = server.request(method, f"/v1/sandboxes/{session_id}{rest}", body, token=BOB, raw=raw)
            nobodys = server.request(method, f"/v1/sandboxes/{made_up}{rest}", body, token=BOB, raw=raw)
            named(theirs, 404, "id")
            named(nobodys, 404, "id")
            assert theirs.body.replace(session_id.encode(), b"ID") == nobodys.body.replace(made_up.encode(), b"ID")
            assert b"MINE" not in theirs.body
        assert session_id not in session_ids(server, BOB)
    assert server.request("GET", f"/v1/sandboxes/{session_id}").status == 200
    assert files_of(server, session_id) == {"mine.txt": "file"}
    assert server.request("GET", f"/v1/sandboxes/{session_id}/files/mine.txt").body == b"MINE\n"
    assert run_in(server, session_id, "echo fine") == "fine\n"


# --- quotas -------------------------------------------------------------------------------------
def test_requests_past_the_rate_are_refused_with_retry_after(quota_server: Served) -> None:
    """--requests-per-minute 5: frank's 6th request in the minute is refused 429 with a
    Retry-After of whole seconds (at least 1, at most 60), also a creation (nothing is
    made); the limit is per token: gina is still served."""
    s = quota_server
    frank, gina = QUOTA_TOKENS["frank"], QUOTA_TOKENS["gina"]
    for _ in range(5):
        assert s.request("GET", "/v1/sandboxes", token=frank).status == 200
    sessions = s.request("GET", "/healthz", token=False).json()["sessions"]
    for method, route, body in (("GET", "/v1/sandboxes", None), ("POST", "/v1/sandboxes", {})):
        reply = s.request(method, route, body, token=frank)
        named(reply, 429)
        retry = reply.headers.get("retry-after", "")
        assert retry.isdigit() and 1 <= int(retry) <= 60, reply.headers
    assert s.request("GET", "/healthz", token=False).json()["sessions"] == sessions
    assert s.request("GET", "/v1/sandboxes", token=gina).status == 200
    assert any(r.get("token") == "frank" and r.get("status") == 429 for r in s.log())


def test_sessions_past_a_quota_or_the_budget_are_refused_with_429(quota_server: Served) -> None:
    """--sessions-per-token 1, --max-sandboxes 2 and a memory budget with room for 144 MiB of
    sessions: carol's second session, a session past what the budget has left, and a third
    session past the server's two are refused 429 with Retry-After, each saying which bound,
    and none is made; the premises: within the bounds, the same requests are served."""
    s = quota_server
    carol, dave, erin = (QUOTA_TOKENS[name] for name in ("carol", "dave", "erin"))

    def live() -> int:
        return int(s.request("GET", "/healthz", token=False).json()["sessions"])

    def refused(token: str, body: dict[str, Any], why: str) -> None:
        before = live()
        reply = s.request("POST", "/v1/sandboxes", body, token=token)
        detail = named(reply, 429)
        assert re.search(why, detail[0]["msg"]), detail
        assert int(reply.headers.get("retry-after", "0")) >= 1, reply.headers
        assert live() == before

    # (each token sends at most 5 requests here: the rate is 5 a minute)
    assert live() == 0
    made = s.request("POST", "/v1/sandboxes", {}, token=carol)  # 128 MiB: 16 of the budget left
    assert made.status == 201, made
    refused(carol, {"memory": "32M"}, r"carol has 1 live session")
    refused(dave, {"memory": "32M"}, r"memory budget")
    assert s.request("DELETE", f"/v1/sandboxes/{made.json()['id']}", token=carol).status == 204
    assert s.request("POST", "/v1/sandboxes", {"memory": "32M"}, token=dave).status == 201  # 144 MiB were free
    refused(erin, {"memory": "128M"}, r"memory budget")  # 112 MiB are left
    assert s.request("POST", "/v1/sandboxes", {"memory": "64M"}, token=erin).status == 201
    assert live() == 2
    refused(carol, {"memory": "32M"}, r"holds 2 sessions")  # the server's two, whatever the budget
    metrics = s.request("GET", "/metrics", token=erin).body.decode()
    assert f"nsbox_memory_held_bytes {(2048 + 32 + 64) * MiB}" in metrics, metrics


def test_a_program_may_have_the_servers_maximum_memory(quota_server: Served) -> None:
    """The bound is inclusive: a /run_code program asking for exactly --max-memory (2 GiB, the
    default) is run like one asking for a MiB less, not answered SandboxError (a value within
    the bounds must not cost a worker its sandbox); a MiB more is refused with 422."""
    require_run_code()  # the server runs these programs with run_code: own mode refuses it
    s, hank = quota_server, QUOTA_TOKENS["hank"]
    for megabytes in (2047, 2048):
        reply = s.request("POST", "/run_code", {"code": "print(1)", "memory_limit_MB": megabytes}, token=hank)
        assert reply.status == 200, reply
        answer = reply.json()
        assert (answer["status"], answer["message"]) == ("Success", ""), (megabytes, answer)
        assert answer["run_result"]["stdout"] == "1\n", answer
    named(
        s.request("POST", "/run_code", {"code": "print(1)", "memory_limit_MB": 2049}, token=hank),
        422,
        "memory_limit_MB",
    )
