"""Routed network mode (``--net routed``), attacked from inside: a sandbox with a real
interface tries to reach what the allowlist does not hold, around DNS, past the limits.

Every sandbox's veth ends in our own uplink namespace, which forwards only into a second
namespace of test hosts and a DNS server (``_networld.routed_world``): a filter bug could
only ever reach those, and their log shows what got through.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import nsbox
from nsbox import NetworkPolicy
from nsbox._netlink import NetNamespace
from nsbox._routed._addresses import GATEWAY
from tests.conftest import NSBOX_CLI, require_root, require_sandbox
from tests.security._networld import GIT_PORT, ROUTED_NAMES, UDP_ECHO_PORT, World, routed_world

API = ROUTED_NAMES["api.test"][0]
SHORT = ROUTED_NAMES["short.test"][0]
DENIED = ROUTED_NAMES["denied.test"][0]

#: Run inside a sandbox: each step of argv[1] (JSON) done in order, the outcomes printed as JSON.
#: A step: ["resolve", name] | ["tcp", host, port, path(, timeout)] | ["udp", host, port] |
#: ["dns", server, port, name] (a query sent straight there) | ["sleep", seconds].
PROBE = r"""
import json, socket, sys, time
out = []
for step in json.loads(sys.argv[1]):
    kind, args = step[0], step[1:]
    try:
        if kind == "resolve":
            out.append(sorted({i[4][0] for i in socket.getaddrinfo(args[0], 80, type=socket.SOCK_STREAM)}))
        elif kind == "tcp":
            with socket.create_connection((args[0], args[1]), timeout=args[3] if len(args) > 3 else 2) as s:
                s.sendall(f"GET {args[2]} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
                s.settimeout(5)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                out.append(data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace"))
        elif kind in ("udp", "dns"):
            payload = b"nsbox-udp"
            if kind == "dns":  # a query for args[2], straight to the server args[0]
                labels = b"".join(bytes([len(p)]) + p.encode() for p in args[2].split("."))
                payload = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00\x00\x01\x00\x01"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                s.sendto(payload, (args[0], args[1]))
                reply = s.recv(512)
                out.append(reply.decode() if kind == "udp" else "answered")
        elif kind == "sleep":
            time.sleep(args[0])
            out.append(None)
    except OSError as exc:
        out.append(f"error {type(exc).__name__} {exc.errno}")
print(json.dumps(out))
"""
TIMED_OUT = "error TimeoutError None"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_root("builds its test hosts and the uplink in network namespaces of its own")
    with routed_world(tmp_path_factory.mktemp("routed")) as made:
        yield made


def routed(world: World, *allowed: str, **options: object) -> NetworkPolicy:
    return NetworkPolicy("routed", allowed, uplink=world.path, resolver=world.resolver, **options)  # type: ignore[arg-type]


def probe(sandbox: nsbox.NsSandbox, *steps: list[object]) -> list[object]:
    result = sandbox.run(["python3", "-c", PROBE, json.dumps(steps)], capture_output=True, timeout=60)
    assert result.exit_code == 0, result
    return json.loads(result.stdout or b"null")  # type: ignore[no-any-return]


def network_events(audit: Path) -> list[dict[str, object]]:
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    return [e for e in events if e["event"] == "network"]


def test_plain_tcp_udp_curl_and_git_reach_an_allowed_host(world: World, tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    with nsbox.NsSandbox(network=routed(world, "api.test"), audit_log=str(audit)) as sandbox:
        env = sandbox.run(["env"], capture_output=True).stdout or b""
        assert b"PROXY" not in env.upper(), "routed mode works without proxy variables"
        got = probe(sandbox, ["tcp", "api.test", 80, "/tcp"], ["udp", "api.test", UDP_ECHO_PORT])
        assert got == ["allowed", "nsbox-udp"]
        curl = sandbox.run(
            ["curl", "-sS", "--noproxy", "*", "--max-time", "8", "http://api.test/curl"], capture_output=True
        )
        assert curl.stdout == b"allowed", curl
        git = sandbox.run(["git", "ls-remote", f"http://api.test:{GIT_PORT}/repo.git"], capture_output=True)
        assert git.exit_code == 0 and b"refs/heads/main" in (git.stdout or b""), git
    assert {f"{API}:80 /tcp", f"{API}:80 /curl", f"{API}:{UDP_ECHO_PORT} udp"} <= set(world.requests())
    flows = [e for e in network_events(audit) if e.get("kind") == "flow" and e["address"] == API]
    assert len(flows) == 1 and flows[0]["verdict"] == "allowed", flows
    assert int(flows[0]["bytes_in"]) > 0 and int(flows[0]["bytes_out"]) > 0  # type: ignore[call-overload]


def test_unlisted_private_metadata_own_and_raw_addresses_are_dropped_counted_and_logged(
    world: World, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.log"
    listed = ("api.test", "private.test", "meta.test")
    raw = [DENIED, "10.0.0.5", "169.254.169.254", world.own, str(GATEWAY)]
    mark = world.mark()
    with nsbox.NsSandbox(network=routed(world, *listed), audit_log=str(audit)) as sandbox:
        names = probe(sandbox, ["resolve", "denied.test"], ["resolve", "private.test"], ["resolve", "meta.test"])
        assert all(str(n).startswith("error gaierror") for n in names), names
        got = probe(sandbox, *[["tcp", address, 80, "/raw", 1.5] for address in raw])
        assert got == [TIMED_OUT] * len(raw), got
        # DNS around nsbox's resolver: straight to the world's DNS server, which is not listed
        assert probe(sandbox, ["dns", world.resolver, 53, "bypass.test"]) == [TIMED_OUT]
        assert probe(sandbox, ["tcp", "api.test", 80, "/premise"]) == ["allowed"], "the premise: routing works"
    seen = world.lines(mark)
    assert not [line for line in seen if line.startswith("accept") and not line.startswith(f"accept {API}:80")], seen
    asked = {line.split()[1] for line in seen if line.startswith("dns ")}
    assert asked == {"api.test", "private.test", "meta.test"}, seen  # by the router: listed names only
    events = network_events(audit)
    refused = {e["host"]: e["reason"] for e in events if e.get("kind") == "dns" and e["verdict"] == "refused"}
    assert refused["denied.test"] == "the name is not in the allowed hosts"
    assert "10.0.0.0/8" in str(refused["private.test"]) and "169.254.0.0/16" in str(refused["meta.test"])
    dropped = {(e["address"], e["port"]): e for e in events if e.get("kind") == "flow" and e["verdict"] == "dropped"}
    for address in raw:
        assert int(dropped[(address, 80)]["packets_out"]) >= 1, (address, dropped)  # type: ignore[call-overload]
    assert (world.resolver, 53) in dropped


def test_an_address_is_reachable_only_after_its_name_resolved_and_until_its_ttl_ends(world: World) -> None:
    assert ROUTED_NAMES["short.test"][1] == 2, "the premise: short.test's answer lives 2 s"
    with nsbox.NsSandbox(network=routed(world, "api.test", "short.test")) as sandbox:
        got = probe(
            sandbox,
            ["tcp", API, 80, "/before", 1.5],
            ["resolve", "api.test"],
            ["tcp", API, 80, "/after"],
            ["resolve", "short.test"],
            ["tcp", SHORT, 80, "/fresh"],
            ["sleep", 3.5],
            ["tcp", SHORT, 80, "/expired", 1.5],
            ["resolve", "short.test"],
            ["tcp", SHORT, 80, "/again"],
        )
    assert got == [TIMED_OUT, [API], "allowed", [SHORT], "short", None, TIMED_OUT, [SHORT], "short"], got


def test_rate_and_bytes_are_cut_as_configured(world: World) -> None:
    limit = 300_000
    with nsbox.NsSandbox(network=routed(world, "big.test", max_bytes=limit)) as sandbox:
        got = sandbox.run(
            ["curl", "-s", "--max-time", "6", "-o", "/tmp/big", "-w", "%{size_download}", "http://big.test/"],
            capture_output=True,
        )
        size = int(got.stdout or b"0")
        assert 0 < size <= limit, got
    with nsbox.NsSandbox(network=routed(world, "api.test", rate=2)) as sandbox:
        steps: list[list[object]] = [["resolve", "api.test"]] + [["tcp", API, 80, "/rate", 0.3] for _ in range(12)]
        outcomes = probe(sandbox, *steps)[1:]
    reached = outcomes.count("allowed")
    assert 1 <= reached <= 6, outcomes  # 2 a second, a burst of 2: far fewer than 12 in ~3 s


def test_one_sandbox_cannot_reach_another_nor_reconfigure_its_interface(world: World) -> None:
    with (
        nsbox.NsSandbox(network=routed(world, "api.test")) as first,
        nsbox.NsSandbox(network=routed(world, "api.test", "10.200.0.0/16")) as second,
    ):
        shown = (first.run(["ip", "-4", "-o", "addr", "show", "eth0"], capture_output=True).stdout or b"").split()
        first_ip = shown[3].decode().split("/")[0]
        # a packet that arrived would be answered (refused: nothing listens); a dropped one is
        # not. Even listed as a network, the sandboxes' range is a blocked one.
        assert probe(first, ["tcp", "127.0.0.1", 8080, "/", 1.5]) == ["error ConnectionRefusedError 111"]
        assert probe(second, ["tcp", first_ip, 8080, "/", 1.5]) == [TIMED_OUT]
        for argv in (
            ["ip", "addr", "add", "10.200.99.99/32", "dev", "eth0"],
            ["ip", "route", "add", "198.51.100.0/24", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "down"],
        ):
            changed = second.run(argv, capture_output=True)
            assert changed.exit_code != 0 and b"Operation not permitted" in (changed.stderr or b""), (argv, changed)
        assert probe(second, ["tcp", "api.test", 80, "/still"]) == ["allowed"]


def _address_of(sandbox: nsbox.NsSandbox) -> str:
    shown = (sandbox.run(["ip", "-4", "-o", "addr", "show", "eth0"], capture_output=True).stdout or b"").split()
    return shown[3].decode().split("/")[0]


UDP_LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999))
s.settimeout(float(sys.argv[1]))
print("up", flush=True)
got = 0
try:
    while True:
        got += len(s.recv(65536))
except OSError:
    pass
print(got)
"""


def test_nothing_but_replies_comes_in_and_a_flood_from_outside_spends_no_budget(world: World) -> None:
    """Packets from the uplink itself (a process there) and from another sandbox to this one
    are dropped before they count against its byte budget: afterwards it still has it all."""
    sender = (
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(200):\n"
        "    s.sendto(b'x' * 1400, (sys.argv[1], 9999))\n"
        "    time.sleep(0.002)\n"
    )
    with (
        nsbox.NsSandbox(network=routed(world, "api.test", max_bytes=60_000)) as target,
        nsbox.NsSandbox(network=routed(world, "api.test")) as other,
    ):
        address = _address_of(target)
        results: list[nsbox.RunResult] = []
        listener = threading.Thread(
            target=lambda: results.append(target.run(["python3", "-c", UDP_LISTEN, "4"], capture_output=True))
        )
        listener.start()
        time.sleep(1.0)  # the listener binds within that
        with NetNamespace.existing(world.name).popen([sys.executable, "-c", sender, address]) as from_uplink:
            from_uplink.wait(timeout=30)
        other.run(["python3", "-c", sender, address], timeout=30)
        listener.join(timeout=30)
        assert results and (results[0].stdout or b"").split() == [b"up", b"0"], results
        # 2 x 280 KB sent at it, none let through or counted: its 60 KB are still there
        assert probe(target, ["tcp", "api.test", 80, "/budget"]) == ["allowed"]


def _leftovers(world: World) -> tuple[list[str], list[str], list[str], list[int]]:
    """Links and nftables tables in the uplink, nsbox links in our own namespace, routers."""
    uplink = NetNamespace.existing(world.name)
    program = "from nsbox._routed._nft import Nft; print(' '.join(Nft().table_names()))"
    with uplink.popen([sys.executable, "-c", program], stdout=subprocess.PIPE) as lister:
        tables = (lister.communicate(timeout=30)[0] or b"").decode().split()
    own_links = [n for n in os.listdir("/sys/class/net") if n.startswith("nsbox")]
    return uplink.link_names(), tables, own_links, _leftovers_routers()


def test_a_hundred_routed_sandboxes_and_a_killed_supervisor_leave_nothing(world: World) -> None:
    for i in range(100):
        with nsbox.NsSandbox(network=routed(world, "api.test")) as sandbox:
            if i % 25 == 0:
                assert probe(sandbox, ["tcp", "api.test", 80, f"/many{i}"]) == ["allowed"]
    assert _leftovers(world) == (["lo", "world0"], [], [], [])
    # a supervisor killed outright: its router is told (parent-death signal, SIGTERM) and ends
    # as at a close, deleting its table and veth
    cli = subprocess.Popen(
        [NSBOX_CLI, "exec", "--net", "routed", "--allow-host", "api.test", "--net-uplink", world.path,
         "--net-resolver", str(world.resolver), "--", "sleep", "60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while len(_leftovers(world)[0]) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_leftovers(world)[0]) == 3, "the premise: the sandbox's veth was made"
    finally:
        cli.send_signal(signal.SIGKILL)
        cli.wait()
    deadline = time.monotonic() + 20
    while _leftovers(world) != (["lo", "world0"], [], [], []) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _leftovers(world) == (["lo", "world0"], [], [], [])


def _routers() -> set[int]:
    return set(_leftovers_routers())


def _leftovers_routers() -> list[int]:
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "nsbox-router":
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_a_killed_router_leaves_its_sandbox_filtered_and_its_table_is_swept_later(world: World) -> None:
    before = _routers()
    with nsbox.NsSandbox(network=routed(world, "api.test")) as sandbox:
        assert probe(sandbox, ["tcp", "api.test", 80, "/alive"]) == ["allowed"]
        (router,) = _routers() - before
        os.kill(router, signal.SIGKILL)  # ours: the router of the sandbox this test made
        deadline = time.monotonic() + 10
        while router in _routers() and time.monotonic() < deadline:
            time.sleep(0.05)
        # its table stays (persistent): what was allowed still is, nothing else is
        assert probe(sandbox, ["tcp", API, 80, "/after-kill"], ["tcp", DENIED, 80, "/after-kill", 1.5]) == [
            "allowed",
            TIMED_OUT,
        ]
    assert len(_leftovers(world)[1]) == 1, "the premise: the killed router's table outlived it"
    with nsbox.NsSandbox(network=routed(world, "api.test")):
        pass  # the next router in this uplink sweeps the orphan (its veth is gone)
    assert _leftovers(world) == (["lo", "world0"], [], [], [])
    assert not [line for line in world.lines() if line.startswith(f"accept {DENIED}")]


def test_an_uplink_that_does_not_forward_is_refused_and_left_as_it_was(world: World, tmp_path: Path) -> None:
    with NetNamespace(f"nsbox-noforward-{os.getpid()}") as plain:
        policy = NetworkPolicy("routed", ("api.test",), uplink=plain.path, resolver=world.resolver)
        with pytest.raises(nsbox.SetupError) as raised:
            nsbox.NsSandbox(network=policy, audit_log=str(tmp_path / "audit.log")).start()
        assert "net.ipv4.ip_forward is 0" in str(raised.value) and "nsbox never changes it" in str(raised.value)
        assert plain.link_names() == ["lo"]


def test_the_cli_runs_a_routed_sandbox(world: World) -> None:
    done = subprocess.run(
        [NSBOX_CLI, "exec", "--net", "routed", "--allow-host", "api.test", "--net-uplink", world.path,
         "--net-resolver", str(world.resolver), "--", "curl", "-sS", "--max-time", "8", "http://api.test/cli"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, b"allowed"), done
    assert world.requested(API, 80, "/cli")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"allowed_hosts": ("2001:db8::1",)}, "network 'routed' is IPv4 only"),
        ({"allowed_hosts": ("203.0.113.0/24:443",)}, "takes a port on a host or one IP, not on a network"),
        ({"resolver": "resolver.test"}, "is not IPv4[:PORT]"),
        ({"resolver": "198.51.100.53:70000"}, "is not IPv4[:PORT]"),
    ],
)
def test_what_the_filter_cannot_hold_is_refused_not_widened(options: dict[str, object], message: str) -> None:
    with pytest.raises(nsbox.SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        NetworkPolicy("routed", **options)  # type: ignore[arg-type]


def test_a_resolver_needs_routed_mode() -> None:
    with pytest.raises(nsbox.SpecError, match="a resolver needs network 'routed'"):
        NetworkPolicy("allow", ("api.test",), resolver="198.51.100.53")


def test_as_an_ordinary_user_routed_mode_is_refused_with_the_remedy() -> None:
    if os.geteuid() == 0:
        pytest.skip("an ordinary user's behaviour: the rootless passes run it")
    require_sandbox()
    with pytest.raises(nsbox.SetupError, match="needs root") as raised:
        nsbox.NsSandbox(network=NetworkPolicy("routed", ("api.test",))).start()
    assert "--net allow" in str(raised.value)
