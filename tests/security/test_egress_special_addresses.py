"""IPv6 forms of blocked IPv4 addresses, and IPv6 special-purpose ranges, asked of the real
egress proxy for names that ARE allowed (issue 17: an attacker who controls an allowed
domain's AAAA record points it at ``::a9fe:a9fe``, ``::ffff:0:a9fe:a9fe``,
``64:ff9b:1::a9fe:a9fe`` or ``2002:a9fe:a9fe::1``, all forms of 169.254.169.254).

Everything happens in a network namespace of this module's own (``nsbox-uplink-<random>``):
each of those IPv6 addresses is put on its loopback with a server behind it that logs every
connection it accepts. Every sandbox here has ``uplink=`` that namespace, so a proxy that
wrongly lets such an address through connects to OUR fake (the test sees the accept, and the
body of the fake, as the failure it is), never to this machine's network, which has a real
service at 169.254.169.254. Before anything that could reach a blocked address is asked, the
sandbox's proxy is seen to connect out from our namespace (``prove_uplink``).
"""

from __future__ import annotations

import json
import secrets
import subprocess  # nosec B404  # the tests' own commands
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import nsbox
from nsbox import NetworkPolicy
from nsbox._netlink import NetNamespace
from tests.conftest import NSBOX_CLI, require_root
from tests.security.test_network_policy import ask, connect, get, network_events, refused, settle, token

METADATA = "169.254.169.254"
PRIVATE = "10.0.0.5"

#: name -> (address, the IPv4 it embeds, or None): refused although each name is allowed.
#: The first four are the forms of the issue.
FORMS: dict[str, tuple[str, str | None]] = {
    "compat.test": ("::a9fe:a9fe", METADATA),  # IPv4-compatible (::/96)
    "siit.test": ("::ffff:0:a9fe:a9fe", METADATA),  # IPv4-translated, SIIT (::ffff:0:0:0/96)
    "nat64-local.test": ("64:ff9b:1::a9fe:a9fe", METADATA),  # local-use NAT64 (64:ff9b:1::/48)
    "sixtofour.test": ("2002:a9fe:a9fe::1", METADATA),  # 6to4 (2002::/16)
    "nat64.test": ("64:ff9b::a9fe:a9fe", METADATA),  # well-known NAT64 (64:ff9b::/96)
    "teredo-server.test": ("2001:0:a00:5::39cc:9bf5", PRIVATE),  # Teredo, server 10.0.0.5
    "teredo-client.test": ("2001:0:c633:640a::5601:5601", METADATA),  # Teredo, client (inverted bits)
    "reserved.test": ("4000::1", None),  # outside 2000::/3
    "site-local.test": ("fec0::1", None),
    "discard.test": ("100::1", None),
    "doc-3fff.test": ("3fff::1", None),
    "srv6.test": ("5f00::1", None),
    "benchmark.test": ("2001:2::1", None),
    "ula.test": ("fd00::1", None),
}
ISSUE_FORMS = ("compat.test", "siit.test", "nat64-local.test", "sixtofour.test")
#: name -> address: the premises, reached (each server answers with its name).
CONTROLS = {
    "allowed.test": "198.51.100.10",
    "v6.test": "2001:db8::10",
    "nat64-public.test": "64:ff9b::c633:640a",  # 198.51.100.10, through the well-known NAT64 prefix
    "sixtofour-public.test": "2002:c633:640a::1",  # 6to4 of 198.51.100.10
    "teredo-public.test": "2001:0:c633:640a::34ff:8ef4",  # server 198.51.100.10, client 203.0.113.11
}

SERVER = r"""
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
lock = threading.Lock()

def note(text):
    with lock:
        log.write(text + "\n")

def serve(listener, address, body):
    while True:
        conn, _ = listener.accept()
        note(f"accept {address}")
        threading.Thread(target=talk, args=(conn, address, body), daemon=True).start()

def talk(conn, address, body):
    with conn:
        conn.settimeout(5)
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            words = head.split(b"\r\n", 1)[0].split()
            note(f"request {address} {words[1].decode(errors='replace') if len(words) > 1 else '-'}")
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass

for spec in sys.argv[2:]:
    address, body = spec.split("=")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, 80))
    listener.listen(64)
    threading.Thread(target=serve, args=(listener, address, body.encode()), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


@dataclass
class World:
    name: str
    log: Path

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def lines(self, since: int = 0) -> list[str]:
        return self.log.read_text().splitlines()[since:]

    def accepts(self, address: str, since: int = 0) -> list[str]:
        return [line for line in self.lines(since) if line == f"accept {address}"]

    def requested(self, address: str, path: str) -> bool:
        return f"request {address} {path}" in self.lines()


@contextmanager
def special_world(tmp: Path) -> Iterator[World]:
    """Our namespace: lo with every address of FORMS and CONTROLS (and the IPv4 metadata
    address, which the IPv4-mapped form would reach), one server process serving them all."""
    name = f"nsbox-uplink-{secrets.token_hex(4)}"
    log = tmp / "requests.log"
    log.write_text("")
    served = {address: name for name, (address, _) in FORMS.items()}
    served |= {address: name for name, address in CONTROLS.items()}
    served[METADATA] = "metadata"
    server: subprocess.Popen[bytes] | None = None
    with NetNamespace(name) as namespace:
        try:
            namespace.add_local_addresses(served)
            specs = [f"{address}={body}" for address, body in served.items()]
            server = namespace.popen([sys.executable, "-c", SERVER, str(log), *specs], stdout=subprocess.PIPE)
            assert server.stdout is not None and server.stdout.readline() == b"ready\n", "our servers did not start"
            yield World(name, log)
        finally:
            if server is not None:
                server.kill()
                server.wait()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_root("builds its network hosts in a network namespace of its own")
    with special_world(tmp_path_factory.mktemp("special")) as made:
        yield made


def all_hosts() -> dict[str, str]:
    return {**{name: address for name, (address, _) in FORMS.items()}, **CONTROLS}


def policy(world: World) -> NetworkPolicy:
    """Every name allowed, each mapped to its address in our namespace, out through it."""
    hosts = all_hosts()
    return NetworkPolicy(mode="allow", allowed_hosts=list(hosts), hosts=hosts, uplink=world.path, rate=1000.0)


def prove_uplink(sandbox: Any, world: World) -> None:
    path = token()
    [answer] = ask(sandbox, get("allowed.test", path))
    assert (answer["status"], answer["body"]) == (200, "allowed.test"), answer
    assert world.requested(CONTROLS["allowed.test"], path), "the proxy did not connect out from our namespace"


def test_allowed_names_that_map_to_ipv6_forms_of_blocked_addresses_are_refused(world: World, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with nsbox.NsSandbox(network=policy(world), audit_log=str(audit)) as sandbox:
        prove_uplink(sandbox, world)
        mark = len(world.lines())
        plain = ask(sandbox, *(get(name, token()) for name in FORMS))
        tunnels = ask(sandbox, *(connect(f"{name}:80", token()) for name in FORMS))
        controls = ask(sandbox, *(get(name, token()) for name in CONTROLS))
    settle()
    for name, answer in [*zip(FORMS, plain, strict=True), *zip(FORMS, tunnels, strict=True)]:
        address, embedded = FORMS[name]
        assert refused(answer), (name, address, answer)
        assert embedded is None or embedded in answer["body"], ("the reason names the embedded IPv4", answer)
    for name, (address, _) in FORMS.items():
        assert world.accepts(address, since=mark) == [], f"{name} ({address}) was connected to"
    assert world.accepts(METADATA, since=mark) == []
    for name, answer in zip(CONTROLS, controls, strict=True):
        assert (answer["status"], answer["body"]) == (200, name), ("premise: reached when allowed", name, answer)
    events = network_events(audit)
    for name, (address, embedded) in FORMS.items():
        mine = [e for e in events if e["host"] == name]
        assert len(mine) == 2 and all(e["verdict"] == "refused" for e in mine), mine
        assert all(e["address"] == address and e["bytes_in"] == 0 for e in mine), mine
        assert all("block" in e["reason"] or "reserved" in e["reason"] for e in mine), mine
        assert embedded is None or all(embedded in e["reason"] for e in mine), mine


def test_the_cli_with_net_allow_refuses_the_four_forms_of_the_issue(world: World, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    flags = ["--net", "allow", "--net-uplink", world.path, "--audit-log", str(audit)]
    for name, address in [*((n, FORMS[n][0]) for n in ISSUE_FORMS), ("allowed.test", CONTROLS["allowed.test"])]:
        flags += ["--allow-host", name, "--add-host", f"{name}={address}"]
    premise = token()
    fetch = "curl -s --max-time 8 -w ' %{{http_code}}' http://{}{} | tr -d '\\n'; echo; "
    script = fetch.format("allowed.test", premise) + "".join(fetch.format(name, "/") for name in ISSUE_FORMS)
    mark = len(world.lines())
    proc = subprocess.run([NSBOX_CLI, "exec", *flags, "--", "sh", "-c", script], capture_output=True, timeout=60)
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == "allowed.test 200", ("premise: the proxy connects out from our namespace", proc)
    assert world.requested(CONTROLS["allowed.test"], premise)
    assert len(lines) == 1 + len(ISSUE_FORMS), proc
    for name, line in zip(ISSUE_FORMS, lines[1:], strict=True):
        assert line.startswith("nsbox: ") and line.endswith(" 403") and METADATA in line, (name, line)
    settle()
    for name in ISSUE_FORMS:
        assert world.accepts(FORMS[name][0], since=mark) == [], name
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    verdicts = {e["host"]: e["verdict"] for e in events if e["event"] == "network"}
    assert verdicts == {"allowed.test": "allowed", **dict.fromkeys(ISSUE_FORMS, "refused")}, verdicts
