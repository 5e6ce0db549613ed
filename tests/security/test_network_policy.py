"""The network egress policy (``network="none"`` / ``NetworkPolicy(mode="allow", ...)``),
checked against its contract from inside sandboxes.

Everything happens in a world of our own (``_networld``): a network namespace
``nsbox-uplink-<random>`` with the test hosts' addresses on its loopback and servers behind
them that log every connection they accept. Every sandbox here gets ``uplink=`` that
namespace and ``hosts=`` names that point into it, so a broken policy can only ever reach our
own servers (a hit in their log is how a leak shows), never this machine's network, which
has a real service at 169.254.169.254. Requests that would reach a blocked address if the
policy failed are only made in a sandbox whose proxy has first been seen to connect out from
our namespace (``prove_uplink``).

Inside, ``PROBE`` talks to the proxy named by ``HTTP_PROXY`` with raw sockets (absolute-form
``GET`` and ``CONNECT``) and reports status, body and time; curl and urllib are used as a
payload would use them.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nsbox
from nsbox import NetworkPolicy
from nsbox._netlink import NETNS_DIR
from nsbox._netpolicy import blocked_reason
from tests.conftest import NSBOX_CLI, require_root, require_sandbox, wait_until
from tests.integration._session_api import LOCAL_KINDS, SyncClient, below_helpers, open_session
from tests.security._networld import BIG_BYTES, SLOW_SECONDS, World, network_world

ALLOWED = "198.51.100.10"
DENIED = "198.51.100.20"
PRIVATE = "10.0.0.5"
METADATA = "169.254.169.254"
DOC = "203.0.113.7"
SLOW = "198.51.100.30"
BIG = "198.51.100.40"
PROXY_URL = "http://127.0.0.1:3128"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")
SENSITIVE_PORTS = (22, 23, 25, 110, 143, 445, 465, 587, 993, 995, 2375, 2376, 2379, 2380, 3306, 5432, 6379, 6443)
SENSITIVE_PORTS += (9200, 10250, 10255, 11211, 27017)
ENETUNREACH = "ENETUNREACH"

PROBE = r"""
import errno, json, os, socket, sys, time, urllib.parse

proxy = urllib.parse.urlsplit(os.environ.get("HTTP_PROXY", "http://127.0.0.1:3128"))

def read_all(sock):
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, "timeout"
        except OSError as exc:
            return data, errno.errorcode.get(exc.errno, str(exc))
        if not chunk:
            return data, None
        data += chunk

def split(data):
    head, _, body = data.partition(b"\r\n\r\n")
    words = head.split(b"\r\n", 1)[0].split()
    if len(words) >= 2 and words[0].startswith(b"HTTP/") and words[1].isdigit():
        return int(words[1]), body
    return 0, data

def one(req):
    kind, target, path = req["kind"], req.get("target", ""), req.get("path", "/")
    out = {"kind": kind, "target": target}
    started = time.monotonic()
    if kind == "sleep":
        time.sleep(req["seconds"])
        return out
    if kind == "direct":
        host, port = target.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if req.get("udp") else socket.SOCK_STREAM)
        sock.settimeout(3)
        try:
            if req.get("udp"):
                sock.sendto(b"x", (host, int(port)))
            else:
                sock.connect((host, int(port)))
                sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            out["error"] = "connected"
        except OSError as exc:
            out["error"] = errno.errorcode.get(exc.errno, str(exc))
        sock.close()
        return out
    try:
        sock = socket.create_connection((proxy.hostname, proxy.port), timeout=req.get("wait", 8))
    except OSError as exc:
        out.update(status=-1, error=errno.errorcode.get(exc.errno, str(exc)), body="", length=0)
        return out
    with sock:
        err = None
        if kind == "get":
            sock.sendall(f"GET http://{target}{path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
            data, err = read_all(sock)
            status, body = split(data)
        elif kind == "raw":
            sock.sendall(req["data"].encode("latin-1"))
            data, err = read_all(sock)
            status, body = split(data)
        else:  # connect, then GET path through the tunnel
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                try:
                    chunk = sock.recv(4096)
                except OSError as exc:
                    err = errno.errorcode.get(getattr(exc, "errno", None) or 0, type(exc).__name__)
                    break
                if not chunk:
                    break
                head += chunk
            status, rest = split(head)
            if status == 200:
                host = target.rsplit(":", 1)[0].strip("[]")
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                data, err = read_all(sock)
                data = rest + data
                out["raw"] = data[:100].decode("latin-1")
                out["inner"], body = split(data)
            else:
                more, err2 = read_all(sock)
                body, err = rest + more, err or err2
    out.update(status=status, body=body[:300].decode("latin-1"), length=len(body), error=err)
    out["elapsed"] = round(time.monotonic() - started, 3)
    return out

results = [one(r) for r in json.loads(sys.stdin.read())]
print(json.dumps(results))
"""


# -- requests and their answers ---------------------------------------------------------------


def get(target: str, path: str = "/", **extra: Any) -> dict[str, Any]:
    return {"kind": "get", "target": target, "path": path, **extra}


def connect(target: str, path: str = "/", **extra: Any) -> dict[str, Any]:
    return {"kind": "connect", "target": target, "path": path, **extra}


def raw(data: str) -> dict[str, Any]:
    return {"kind": "raw", "data": data}


def direct(target: str, path: str = "/", udp: bool = False) -> dict[str, Any]:
    return {"kind": "direct", "target": target, "path": path, "udp": udp}


def ask(sandbox: Any, *requests: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs PROBE in ``sandbox`` (an NsSandbox) with ``requests`` (on its stdin); one answer each."""
    result = sandbox.run(["python3", "-c", PROBE], input=json.dumps(list(requests)).encode(), capture_output=True)
    assert result.exit_code == 0, (result.status, result.error, result.stderr)
    answers: list[dict[str, Any]] = json.loads(result.stdout)
    return answers


def refused(answer: dict[str, Any]) -> bool:
    """The contract's refusal: HTTP 403, the body starting with ``nsbox:``."""
    return answer.get("status") == 403 and str(answer.get("body", "")).startswith("nsbox:")


def token() -> str:
    return "/" + secrets.token_hex(6)


def policy(world: World, *allowed: str, **options: Any) -> NetworkPolicy:
    """Every policy of these tests: out through our namespace, names that point into it."""
    options.setdefault("rate", 100.0)  # many requests per sandbox; the rate test sets its own
    return NetworkPolicy(mode="allow", allowed_hosts=allowed, uplink=world.path, hosts=world.hosts, **options)


def prove_uplink(sandbox: Any, world: World) -> None:
    """The premise of every request that could reach a blocked address if the policy were
    broken: this sandbox's proxy connects out from our namespace (our server logs the path)."""
    path = token()
    [answer] = ask(sandbox, get("allowed.test", path))
    assert (answer["status"], answer["body"]) == (200, "allowed"), answer
    assert world.requested(ALLOWED, 80, path), "the proxy did not connect out from the uplink namespace"


def network_events(log: Path) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in log.read_text().splitlines()]
    found = [e for e in events if e["event"] == "network"]
    for event in found:
        assert {"host", "port", "address", "verdict", "reason", "bytes_out", "bytes_in"} <= set(event), event
        assert {"time", "sandbox", "pid"} <= set(event), event
        assert event["verdict"] in ("allowed", "refused"), event
    return found


def settle() -> None:
    """Lets a connection that might still be under way land in the servers' log."""
    time.sleep(0.3)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_root("builds its network hosts with network namespaces and veth pairs on the host")
    with network_world(tmp_path_factory.mktemp("networld")) as made:
        yield made


# -- allowed and refused hosts ----------------------------------------------------------------


def test_a_listed_host_is_fetched_plain_and_through_a_tunnel(world: World, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    paths = {name: token() for name in ("curl", "tunnel", "urllib", "client", "get", "connect")}
    python = (
        "import http.client, sys, urllib.request\n"
        f"print(urllib.request.urlopen('http://allowed.test{paths['urllib']}', timeout=5).read().decode())\n"
        "conn = http.client.HTTPConnection('127.0.0.1', 3128, timeout=5)\n"
        "conn.set_tunnel('allowed.test', 80)\n"
        f"conn.request('GET', '{paths['client']}')\n"
        "print(conn.getresponse().read().decode())\n"
    )
    with nsbox.NsSandbox(network=policy(world, "allowed.test"), audit_log=str(audit)) as sandbox:
        plain = sandbox.run(
            ["curl", "-sS", "--max-time", "5", f"http://allowed.test{paths['curl']}"], capture_output=True
        )
        tunnel = sandbox.run(
            ["curl", "-sS", "--max-time", "5", "--proxytunnel", f"http://allowed.test{paths['tunnel']}"],
            capture_output=True,
        )
        py = sandbox.run(["python3", "-c", python], capture_output=True)
        by_get, by_connect = ask(
            sandbox, get("allowed.test", paths["get"]), connect("allowed.test:80", paths["connect"])
        )
    assert (plain.exit_code, plain.stdout) == (0, b"allowed"), plain
    assert (tunnel.exit_code, tunnel.stdout) == (0, b"allowed"), tunnel
    assert (py.exit_code, py.stdout) == (0, b"allowed\nallowed\n"), py
    assert (by_get["status"], by_get["body"]) == (200, "allowed"), by_get
    assert (by_connect["status"], by_connect.get("inner"), by_connect["body"]) == (200, 200, "allowed"), by_connect
    for path in paths.values():
        assert world.requested(ALLOWED, 80, path), f"{path} did not reach the allowed server"
    events = network_events(audit)
    assert len(events) == len(paths), "one network event per connection"
    for event in events:
        assert (event["host"], event["port"], event["address"], event["verdict"]) == (
            "allowed.test",
            80,
            ALLOWED,
            "allowed",
        ), event
        assert event["bytes_in"] > len("allowed"), event


def test_an_unlisted_host_is_refused_by_name_and_by_address(world: World, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    mark = world.mark()
    attempts = [
        get("denied.test", token()),
        get(DENIED, token()),
        connect(f"{DENIED}:80", token()),
        connect("denied.test:80", token()),
        get(f"{DENIED}:80", token()),
    ]
    tricks = [
        raw(f"GET http://allowed.test@{DENIED}/userinfo HTTP/1.1\r\nHost: allowed.test\r\n\r\n"),
        # a second request on a connection to the allowed host goes to that host, not elsewhere
        raw(
            "GET http://allowed.test/first HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
            "GET http://denied.test/second HTTP/1.1\r\nHost: denied.test\r\n\r\n"
        ),
    ]
    with nsbox.NsSandbox(network=policy(world, "allowed.test"), audit_log=str(audit)) as sandbox:
        answers = ask(sandbox, *attempts, *tricks, get("allowed.test", token()))
        by_curl = sandbox.run(
            ["curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}", "http://denied.test/curl"], capture_output=True
        )
    for answer in answers[: len(attempts)]:
        assert refused(answer), answer
    assert answers[len(attempts)]["status"] in (400, 403), answers[len(attempts)]
    assert (answers[-1]["status"], answers[-1]["body"]) == (200, "allowed"), "premise: the proxy works"
    body, _, code = by_curl.stdout.rpartition(b"\n")
    assert code == b"403" and body.startswith(b"nsbox:"), by_curl
    settle()
    assert world.accepts(DENIED, since=mark) == [], "a refused host was reached"
    events = network_events(audit)
    refusals = [e for e in events if e["verdict"] == "refused"]
    assert {(e["host"], e["port"]) for e in refusals} >= {("denied.test", 80), (DENIED, 80)}, refusals
    assert all(isinstance(e["reason"], str) and e["reason"] for e in refusals), refusals
    # The premise: listed, that host is reachable (so the refusals above were the policy's).
    with nsbox.NsSandbox(network=policy(world, "denied.test")) as sandbox:
        [answer] = ask(sandbox, get("denied.test", token()))
    assert (answer["status"], answer["body"]) == (200, "denied"), answer


def test_metadata_loopback_and_this_hosts_addresses_are_refused_even_when_listed(world: World) -> None:
    own = world.own
    # Listed by name and as ranges: not enough, only an exact IP entry lifts the block.
    listed = ["allowed.test", "meta.test", "169.254.0.0/16", "::ffff:0:0/96", "127.0.0.0/8", "loop.test"]
    listed += ["self.test", f"{own}/30"]
    attempts = [
        get("meta.test", token()),
        get(METADATA, "/latest/meta-data/"),
        connect(f"{METADATA}:80", token()),
        connect("meta.test:80", token()),
        get("[::ffff:169.254.169.254]", token()),
        connect("[::ffff:a9fe:a9fe]:80", token()),
        get("127.0.0.1:8080", token()),
        get("loop.test:8080", token()),
        get("127.0.0.1:3128", token()),
        connect("127.0.0.1:3128", token()),
        connect("127.0.0.1:8080", token()),
        get(own, token()),
        connect(f"{own}:80", token()),
        get("self.test", token()),
    ]
    with nsbox.NsSandbox(network=policy(world, *listed)) as sandbox:
        prove_uplink(sandbox, world)
        mark = world.mark()
        answers = ask(sandbox, *attempts)
        by_curl = sandbox.run(
            ["curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}", f"http://{METADATA}/curl"], capture_output=True
        )
        neighbour = ask(sandbox, get(world.neighbour, token()))[0] if world.neighbour else None
    for answer in answers:
        assert refused(answer), answer
    body, _, code = by_curl.stdout.rpartition(b"\n")
    assert code == b"403" and body.startswith(b"nsbox:"), by_curl
    settle()
    for address in (METADATA, "127.0.0.1", own):
        assert world.accepts(address, since=mark) == [], f"{address} was reached"
    if neighbour is not None and blocked_reason(ipaddress.ip_address(world.neighbour), own=()) is None:
        # the premise: the range listed around this host's address works
        assert (neighbour["status"], neighbour["body"]) == (200, "neighbour"), neighbour
    elif neighbour is not None:  # this host's network is itself a blocked range (such as 192.0.2.0/24)
        assert refused(neighbour) and "blocked range" in neighbour["body"], neighbour
        assert world.accepts(str(world.neighbour), since=mark) == []


def test_blocked_addresses_listed_as_exact_ips_are_reached(world: World) -> None:
    """The premise of the refusals above: the same addresses, listed exactly, reach our fakes
    of them (so a refusal there is the policy's, and the test can see a success)."""
    listed = ("allowed.test", METADATA, "127.0.0.1:8080", world.own, PRIVATE)
    with nsbox.NsSandbox(network=policy(world, *listed)) as sandbox:
        prove_uplink(sandbox, world)
        answers = ask(sandbox, get(METADATA, token()), get("127.0.0.1:8080", token()), get(world.own), get(PRIVATE))
    assert [(a["status"], a["body"]) for a in answers] == [
        (200, "metadata"),
        (200, "loopback"),
        (200, "own"),
        (200, "private"),
    ], answers


def test_a_listed_name_that_resolves_to_a_private_address_is_refused(world: World) -> None:
    mark = world.mark()
    with nsbox.NsSandbox(network=policy(world, "allowed.test", "private.test")) as sandbox:
        prove_uplink(sandbox, world)
        answers = ask(sandbox, get("private.test", token()), connect("private.test:80", token()))
    for answer in answers:
        assert refused(answer), answer
    settle()
    assert world.accepts(PRIVATE, since=mark) == [], "the rebinding name reached the private host"
    # The premise: that address, listed as an exact IP, is reached.
    with nsbox.NsSandbox(network=policy(world, PRIVATE)) as sandbox:
        [answer] = ask(sandbox, get(PRIVATE, token()))
    assert (answer["status"], answer["body"]) == (200, "private"), answer


def test_sensitive_ports_need_an_entry_that_names_the_port(world: World) -> None:
    mark = world.mark()
    with nsbox.NsSandbox(network=policy(world, DOC, "ssh.test")) as sandbox:
        answers = ask(
            sandbox,
            connect(f"{DOC}:22", token()),
            get(f"{DOC}:22", token()),
            connect("ssh.test:22", token()),
            *(connect(f"{DOC}:{port}") for port in SENSITIVE_PORTS),
            connect(f"{DOC}:80", token()),
        )
    for answer in answers[:-1]:
        assert refused(answer), answer
    assert (answers[-1]["status"], answers[-1]["body"]) == (200, "doc80"), "premise: the host itself is allowed"
    settle()
    assert world.accepts(DOC, since=mark, port=22) == [], "port 22 was reached without an entry naming it"
    path = token()
    with nsbox.NsSandbox(network=policy(world, f"{DOC}:22")) as sandbox:
        ssh, other_port, other_sensitive = ask(
            sandbox, connect(f"{DOC}:22", path), get(DOC, token()), connect(f"{DOC}:23", token())
        )
    assert ssh["status"] == 200 and ssh["raw"].startswith("SSH-2.0-nsbox-test"), ssh
    assert world.requested(DOC, 22, path)
    assert refused(other_port), ("an entry with a port allows that port only", other_port)
    assert refused(other_sensitive), other_sensitive


def test_wildcards_match_subdomains_not_the_bare_domain(world: World) -> None:
    with nsbox.NsSandbox(network=policy(world, "*.test")) as sandbox:
        sub, bare, bare_tunnel = ask(sandbox, get("allowed.test", token()), get("test", token()), connect("test:80"))
    assert (sub["status"], sub["body"]) == (200, "allowed"), sub
    assert refused(bare), bare
    assert refused(bare_tunnel), bare_tunnel
    # The premise: the bare name, listed, is reachable (it points to the allowed server).
    with nsbox.NsSandbox(network=policy(world, "test")) as sandbox:
        [answer] = ask(sandbox, get("test", token()))
    assert (answer["status"], answer["body"]) == (200, "allowed"), answer


def test_cidr_and_port_entries(world: World) -> None:
    with nsbox.NsSandbox(network=policy(world, "198.51.100.0/28", "denied.test:8080")) as sandbox:
        inside, outside, wrong_port = ask(sandbox, get(ALLOWED, token()), get(DENIED, token()), get("denied.test"))
    assert (inside["status"], inside["body"]) == (200, "allowed"), inside
    assert refused(outside), outside
    assert refused(wrong_port), wrong_port


# -- limits --------------------------------------------------------------------------------------


def test_an_idle_connection_is_closed_at_the_timeout(world: World, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    path = token()
    with nsbox.NsSandbox(network=policy(world, "slow.test", timeout=1), audit_log=str(audit)) as sandbox:
        [answer] = ask(sandbox, get("slow.test", path, wait=SLOW_SECONDS + 4))
    assert world.requested(SLOW, 80, path), "premise: the request reached the slow server"
    assert answer["status"] in (0, 504) and answer["body"] != "slow", answer
    assert answer["elapsed"] < 1 + 1.5, ("the slow server answers after 4 s: the proxy must give up at 1 s", answer)
    [event] = [e for e in network_events(audit) if e["host"] == "slow.test"]
    assert event["port"] == 80 and event["address"] == SLOW, event
    assert isinstance(event["reason"], str) and event["reason"], ("the timeout is in the log", event)


def test_a_connect_that_never_completes_gets_504_at_the_timeout(world: World, tmp_path: Path) -> None:
    assert world.blackhole == "black", "premise: connects to the black hole hang"
    audit = tmp_path / "audit.jsonl"
    with nsbox.NsSandbox(network=policy(world, "blackhole.test", timeout=1), audit_log=str(audit)) as sandbox:
        answers = ask(sandbox, get("blackhole.test", token(), wait=10), connect("blackhole.test:80", wait=10))
    for answer in answers:
        assert answer["status"] == 504 and answer["elapsed"] < 1 + 1.5, answer
    events = [e for e in network_events(audit) if e["host"] == "blackhole.test"]
    assert len(events) == 2 and all(e["verdict"] == "refused" and e["reason"] for e in events), events


def test_new_connections_beyond_the_rate_get_429(world: World, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with nsbox.NsSandbox(network=policy(world, "allowed.test", rate=2), audit_log=str(audit)) as sandbox:
        started = time.monotonic()
        answers = ask(sandbox, *(get("allowed.test", token()) for _ in range(10)))
        took = time.monotonic() - started
        time.sleep(1.2)  # the bucket refills
        [later] = ask(sandbox, get("allowed.test", token()))
    statuses = [a["status"] for a in answers]
    assert took < 2, ("premise: ten quick connections", took)
    assert set(statuses) <= {200, 429}, statuses
    assert 1 <= statuses.count(200) <= 4 and statuses.count(429) >= 6, statuses
    assert later["status"] == 200, ("the rate recovers", later)
    events = [e for e in network_events(audit) if e["host"] == "allowed.test"]
    assert len(events) == 11, ("one network event per connection", events)
    rate_refusals = [e for e in events if e["verdict"] == "refused"]
    assert len(rate_refusals) == statuses.count(429), events
    assert all(isinstance(e["reason"], str) and e["reason"] for e in rate_refusals), rate_refusals


def test_a_download_beyond_max_bytes_is_cut_and_later_connections_get_429(world: World, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    limit = 1 << 20
    with nsbox.NsSandbox(
        network=policy(world, "big.test", "allowed.test", max_bytes=limit), audit_log=str(audit)
    ) as sb:
        big, after = ask(sb, get("big.test", token(), wait=20), get("allowed.test", token()))
    assert big["length"] < limit + (256 << 10), ("the download was not cut near the limit", big["length"])
    assert after["status"] == 429, after
    events = network_events(audit)
    [cut] = [e for e in events if e["host"] == "big.test"]
    assert 0 < cut["bytes_in"] <= limit + (256 << 10), cut
    assert isinstance(cut["reason"], str) and cut["reason"], ("the cut is in the log", cut)
    assert [e["verdict"] for e in events if e["host"] == "allowed.test"] == ["refused"], events
    # The premise: without the limit the whole body arrives.
    with nsbox.NsSandbox(network=policy(world, "big.test")) as sandbox:
        [whole] = ask(sandbox, get("big.test", token(), wait=20))
    assert (whole["status"], whole["length"]) == (200, BIG_BYTES), {k: whole[k] for k in ("status", "length")}


def test_bytes_sent_out_in_requests_count_toward_max_bytes(world: World, tmp_path: Path) -> None:
    """max_bytes is "both ways": what a sandbox sends in plain requests (here 4 KB of URL
    each, a way to send data out) counts as much as what it receives."""
    audit = tmp_path / "audit.jsonl"
    limit = 64 << 10
    filler = "/?" + "x" * 4000
    with nsbox.NsSandbox(network=policy(world, "allowed.test", max_bytes=limit), audit_log=str(audit)) as sandbox:
        answers = ask(sandbox, *(get("allowed.test", f"{filler}{i}") for i in range(40)))
    statuses = [a["status"] for a in answers]
    assert statuses[0] == 200, "premise: the long requests themselves are served"
    assert set(statuses) <= {200, 429} and statuses[-1] == 429, ("160 KB went out past a 64 KB limit", statuses)
    assert statuses.count(200) <= 20, statuses


def test_the_audit_log_counts_the_bytes_sent_in_plain_requests_and_tunnels(world: World, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    long_path = "/?" + "x" * 4000
    with nsbox.NsSandbox(network=policy(world, "allowed.test"), audit_log=str(audit)) as sandbox:
        answers = ask(sandbox, connect("allowed.test:80", long_path), get("allowed.test", long_path))
    assert [a["status"] for a in answers] == [200, 200], answers
    tunnel, plain = network_events(audit)
    assert tunnel["bytes_out"] >= 4000 and tunnel["bytes_in"] > len("allowed"), ("premise: a tunnel's bytes", tunnel)
    assert plain["bytes_out"] >= 4000, ("a plain request's bytes out are counted", plain)
    assert plain["bytes_in"] > len("allowed"), plain


def test_a_request_head_too_large_or_with_too_many_fields_gets_431_even_in_one_write(world: World) -> None:
    """The head limits (16 KiB, 100 header lines) hold for a head that arrives whole in one
    read, not only for one still incomplete: nothing of such a request reaches the host."""
    many = "".join(f"X-Field-{i}: v\r\n" for i in range(5000))  # about 80 KB
    some = "".join(f"X-F{i}: v\r\n" for i in range(150))  # 1.5 KB, but 150 fields
    oversized = [
        raw(f"GET http://allowed.test/{'x' * 20000} HTTP/1.1\r\nHost: allowed.test\r\n\r\n"),
        raw(f"GET http://allowed.test{token()} HTTP/1.1\r\nHost: allowed.test\r\n{many}\r\n"),
        raw(f"GET http://allowed.test{token()} HTTP/1.1\r\nHost: allowed.test\r\n{some}\r\n"),
        raw(f"CONNECT allowed.test:80 HTTP/1.1\r\nHost: allowed.test:80\r\n{some}\r\n"),
        raw(f"CONNECT allowed.test:80 HTTP/1.1\r\nHost: allowed.test:80\r\nX-Pad: {'p' * 20000}\r\n\r\n"),
    ]
    under = token() + "?" + "u" * 12000  # just under both limits: forwarded
    fields = "".join(f"X-F{i}: v\r\n" for i in range(95))  # Python's server itself takes 99 at most
    with nsbox.NsSandbox(network=policy(world, "allowed.test")) as sandbox:
        prove_uplink(sandbox, world)
        mark = world.mark()
        answers = ask(sandbox, *oversized)
        settle()
        reached = world.accepts(ALLOWED, since=mark)
        [fine] = ask(sandbox, raw(f"GET http://allowed.test{under} HTTP/1.1\r\nHost: allowed.test\r\n{fields}\r\n"))
    for answer in answers:
        assert answer["status"] == 431 and answer["body"].startswith("nsbox:"), {k: answer.get(k) for k in answer}
    assert reached == [], "an oversized request head was forwarded"
    assert (fine["status"], fine["body"]) == (200, "allowed"), ("premise: a head within the limits passes", fine)
    assert world.requested(ALLOWED, 80, under)


# -- no way around the proxy ---------------------------------------------------------------------

INTERFACES = """
import json, os, socket
names = sorted(n for _, n in socket.if_nameindex())
dev = sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:])
routes = open("/proc/net/route").read().splitlines()[1:]
proxy_env = {k: v for k, v in os.environ.items() if "proxy" in k.lower()}
print(json.dumps({"names": names, "dev": dev, "routes": routes, "env": proxy_env}))
"""


def test_without_a_policy_there_is_only_loopback_and_nothing_gets_out(world: World) -> None:
    mark = world.mark()
    path = token()
    with nsbox.NsSandbox() as sandbox:
        seen = json.loads(sandbox.run(["python3", "-c", INTERFACES], capture_output=True).stdout)
        tries = ask(sandbox, direct(f"{ALLOWED}:80", path), direct(f"{ALLOWED}:53", udp=True), get("allowed.test"))
    assert seen["names"] == ["lo"] and seen["dev"] == ["lo"], seen
    assert seen["routes"] == [] and seen["env"] == {}, seen
    assert tries[0]["error"] == ENETUNREACH and tries[1]["error"] == ENETUNREACH, tries
    assert tries[2]["status"] == -1 and tries[2]["error"] == "ECONNREFUSED", ("no proxy listens", tries[2])
    settle()
    assert world.lines(since=mark) == [], "a sandbox without network reached our servers"


def test_in_an_allow_sandbox_only_the_proxy_leads_out(world: World) -> None:
    mark = world.mark()
    path = token()
    with nsbox.NsSandbox(network=policy(world, "allowed.test", ALLOWED, f"{DOC}:22")) as sandbox:
        seen = json.loads(sandbox.run(["python3", "-c", INTERFACES], capture_output=True).stdout)
        tries = ask(
            sandbox,
            direct(f"{ALLOWED}:80", path),
            direct(f"{DOC}:22"),
            direct(f"{ALLOWED}:53", udp=True),
            get(ALLOWED, token()),
        )
    assert seen["names"] == ["lo"] and seen["dev"] == ["lo"] and seen["routes"] == [], seen
    assert {k: seen["env"].get(k) for k in PROXY_VARS} == dict.fromkeys(PROXY_VARS, PROXY_URL), seen["env"]
    assert seen["env"].get("NO_PROXY") == "localhost,127.0.0.1", seen["env"]
    assert [t["error"] for t in tries[:3]] == [ENETUNREACH] * 3, tries
    assert (tries[3]["status"], tries[3]["body"]) == (200, "allowed"), "premise: listed, through the proxy"
    settle()
    assert not world.requested(ALLOWED, 80, path), "a direct connection got out"
    assert world.accepts(DOC, since=mark, port=22) == []
    assert len(world.accepts(ALLOWED, since=mark)) == 1, "only the proxy's connection arrived"


# -- leftovers -----------------------------------------------------------------------------------


def _net_namespace_members(path: str, exclude: set[int]) -> list[int]:
    """Pids of processes in the network namespace at ``path`` (but those in ``exclude``)."""
    wanted = os.stat(path).st_ino
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in exclude:
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == wanted:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _netns_names() -> set[str]:
    return set(os.listdir(NETNS_DIR))


def _link_names() -> set[str]:
    return {name for _, name in socket.if_nameindex()}


def test_a_hundred_allow_sandboxes_leave_no_namespace_link_or_proxy(world: World) -> None:
    ours = {world.server_pid}
    assert _net_namespace_members(world.path, exclude=set()) == [world.server_pid], "premise: our server, alone"
    netns_before, links_before = _netns_names(), _link_names()
    assert world.name in netns_before
    for i in range(100):
        with nsbox.NsSandbox(network=policy(world, "allowed.test")) as sandbox:
            proxies = _net_namespace_members(world.path, exclude=ours)
            assert proxies, "premise: the proxy is seen while its sandbox is open (it connects from the uplink)"
            if i % 10 == 0:
                [answer] = ask(sandbox, get("allowed.test", token()))
                assert answer["status"] == 200, answer
        assert wait_until(lambda: not _net_namespace_members(world.path, exclude=ours), timeout=5), (
            f"sandbox {i}: its proxy outlived it: {_net_namespace_members(world.path, ours)}"
        )
    # Other people's test worlds (nsbox-uplink-*) may come and go on this machine; nsbox names none.
    new_netns = {n for n in _netns_names() - netns_before if not n.startswith("nsbox-uplink-")}
    assert new_netns == set(), new_netns
    assert _link_names() - links_before == set(), "a link was left on the host"
    assert wait_until(lambda: not below_helpers()), f"supervisor/proxy processes left: {below_helpers()}"


# -- the command line ----------------------------------------------------------------------------


def _cli_net(world: World) -> list[str]:
    flags = ["--net", "allow", "--net-uplink", world.path]
    for name, address in world.hosts.items():
        flags += ["--add-host", f"{name}={address}"]
    return flags


def test_the_cli_fetches_a_listed_host_and_logs_refusals(world: World, tmp_path: Path) -> None:
    base = [
        NSBOX_CLI,
        "exec",
        "--net",
        "allow",
        "--allow-host",
        "allowed.test",
        "--add-host",
        "allowed.test=198.51.100.10",
    ]
    base += ["--net-uplink", world.path]
    path = token()
    proc = subprocess.run([*base, "--", "curl", "-sS", f"http://allowed.test{path}"], capture_output=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, b"allowed"), proc.stderr
    assert world.requested(ALLOWED, 80, path)
    audit = tmp_path / "audit.jsonl"
    flags = [*_cli_net(world), "--allow-host", "slow.test", "--allow-host", "allowed.test", "--net-timeout", "1"]
    flags += ["--net-rate", "50", "--net-bytes", "1M", "--audit-log", str(audit)]
    script = (
        "cd /workspace; curl -s --max-time 8 -o body -w '%{http_code}\\n' http://denied.test/; head -c 6 body; echo; "
        "s=$(date +%s%N); curl -s --max-time 8 -o /dev/null http://slow.test/; e=$(date +%s%N); "
        "echo $(( (e - s) / 1000000 ))"
    )
    proc = subprocess.run([NSBOX_CLI, "exec", *flags, "--", "sh", "-c", script], capture_output=True, timeout=60)
    assert proc.stdout.decode().splitlines()[:2] == ["403", "nsbox:"], proc
    assert int(proc.stdout.decode().splitlines()[2]) < 2500, ("--net-timeout 1 cut the slow answer", proc)
    events = network_events(audit)
    assert [(e["host"], e["verdict"]) for e in events if e["host"] == "denied.test"] == [("denied.test", "refused")]
    [slow] = [e for e in events if e["host"] == "slow.test"]
    assert isinstance(slow["reason"], str) and slow["reason"], slow


@pytest.mark.parametrize(
    "bad",
    [
        ["--net", "bogus"],
        ["--allow-host", ""],
        ["--net-rate", "-1"],
        ["--net", "allow", "--allow-host", ""],
        ["--net", "allow", "--net-rate", "-1"],
        ["--net", "allow", "--net-rate", "many"],
        ["--net", "allow", "--net-timeout", "-1"],
        ["--net", "allow", "--net-bytes", "12XB"],
        ["--net", "allow", "--allow-host", "allowed.test:99999"],
        ["--net", "allow", "--add-host", "allowed.test"],
        ["--net", "allow", "--add-host", "allowed.test=not-an-ip"],
        ["--net", "allow", "--net-uplink", "/no/such/netns"],
    ],
)
def test_the_cli_refuses_bad_network_values_with_exit_125(world: World, bad: list[str]) -> None:
    context = ["--net-uplink", world.path] if "allow" in bad and "--net-uplink" not in bad else []
    proc = subprocess.run(
        [NSBOX_CLI, "exec", *context, *bad, "--", "sh", "-c", "echo ran"], capture_output=True, timeout=60
    )
    assert proc.returncode == 125, (bad, proc.returncode, proc.stderr)
    assert b"ran" not in proc.stdout and proc.stderr.strip(), (bad, proc)


@pytest.mark.parametrize("good", [[], ["--net", "none"], ["--net", "allow"], ["--net", "allow", "--net-rate", "1"]])
def test_the_cli_runs_with_good_network_values(world: World, good: list[str]) -> None:
    """The premise of the exit-2 cases: the same commands with good values run."""
    context = ["--net-uplink", world.path, "--allow-host", "allowed.test"] if "allow" in good else []
    proc = subprocess.run(
        [NSBOX_CLI, "exec", *good, *context, "--", "sh", "-c", "echo ran"], capture_output=True, timeout=60
    )
    assert (proc.returncode, proc.stdout) == (0, b"ran\n"), proc


# -- the session API -----------------------------------------------------------------------------

FETCH = """
import time, urllib.error, urllib.request
def fetch(url):
    started = time.monotonic()
    try:
        code, body = 200, urllib.request.urlopen(url, timeout=10).read().decode()
    except urllib.error.HTTPError as exc:
        code, body = exc.code, exc.read().decode()
    except Exception as exc:
        code, body = 0, type(exc).__name__
    return code, body, time.monotonic() - started
[fetch("http://allowed.test%s"), fetch("http://denied.test/"), fetch("http://slow.test/")]
"""


@pytest.mark.parametrize("kind", LOCAL_KINDS)
def test_the_session_api_with_the_seeds_names(world: World, kind: str) -> None:
    require_sandbox()
    if kind == "SandboxClient":
        options: dict[str, Any] = {
            "allow_network": True,
            "allowed_hosts": ["allowed.test", "slow.test"],
            "network_timeout": 1,
            "network": {"uplink": world.path, "hosts": world.hosts},
        }
    else:
        options = {"network": policy(world, "allowed.test", "slow.test", timeout=1)}
    path = token()
    session = open_session(kind, **options)
    try:
        result = session.execute_code(FETCH % path)
        env = session.execute_code("import os\nos.environ.get('HTTP_PROXY')")
    finally:
        try:
            session.close()
        finally:
            if isinstance(session, SyncClient):
                session.shutdown()
    assert result.success, result
    allowed, denied, slow = ast.literal_eval(result.value)
    assert allowed[:2] == (200, "allowed"), allowed
    assert denied[0] == 403 and denied[1].startswith("nsbox:"), denied
    assert slow[0] != 200 and slow[2] < 1 + 1.5, ("network_timeout=1 reached the proxy", slow)
    assert world.requested(ALLOWED, 80, path)
    assert env.value == repr(PROXY_URL), env


PROBE_NONE = """
import os, socket
(sorted(n for _, n in socket.if_nameindex()), [k for k in os.environ if "proxy" in k.lower()])
"""


def test_a_client_without_allow_network_has_no_network(world: World) -> None:
    require_sandbox()
    session = open_session("SandboxClient")
    try:
        result = session.execute_code(PROBE_NONE)
    finally:
        try:
            session.close()
        finally:
            session.shutdown()
    assert result.value == "(['lo'], [])", result
