"""The network policy, attacked from inside: a sandbox with ``allow`` tries to reach what
it must not, through the proxy and around it.

Every sandbox here connects out from our own uplink namespace (``_networld``): a policy bug
could only ever reach our test servers, whose request log shows what got through.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import nsbox
from nsbox import NetworkPolicy
from nsbox._proxy import own_addresses
from tests.conftest import NSBOX_CLI, require_root
from tests.security._networld import World, network_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_root("builds its network hosts in a network namespace of its own")
    with network_world(tmp_path_factory.mktemp("uplink")) as made:
        yield made


def policy(world: World, *allowed: str, **options: object) -> NetworkPolicy:
    return NetworkPolicy("allow", allowed, uplink=world.path, hosts=world.hosts, **options)  # type: ignore[arg-type]


def curl(sandbox: nsbox.NsSandbox, *args: str) -> tuple[str, bytes]:
    """(HTTP status as curl saw it, body); status "000" when no HTTP answer came. Through a
    tunnel (``-p``), a refusal is the CONNECT's status and there is no body."""
    written = "\n%{http_code} %{http_connect}"
    result = sandbox.run(["curl", "-sS", "--max-time", "8", "-w", written, *args], capture_output=True)
    body, _, codes = (result.stdout or b"").rpartition(b"\n")
    code, connect = codes.decode().split()
    return (connect if "-p" in args and connect not in ("000", "200") else code), body


def test_an_allowed_host_is_reached_plain_and_through_a_tunnel(world: World) -> None:
    with nsbox.NsSandbox(network=policy(world, "allowed.test")) as sandbox:
        assert curl(sandbox, "http://allowed.test/plain") == ("200", b"allowed")
        assert curl(sandbox, "-p", "http://allowed.test/tunnel") == ("200", b"allowed")
        got = sandbox.execute_code("import urllib.request\nurllib.request.urlopen('http://allowed.test/py').read()")
        assert got.value == "b'allowed'", got
    assert {"198.51.100.10:80 /plain", "198.51.100.10:80 /tunnel", "198.51.100.10:80 /py"} <= set(world.requests())


def test_unlisted_hosts_are_refused_by_name_and_by_address(world: World) -> None:
    with nsbox.NsSandbox(network=policy(world, "allowed.test")) as sandbox:
        for args in (["http://denied.test/"], ["http://198.51.100.20/"], ["-p", "http://198.51.100.20/"]):
            code, body = curl(sandbox, *args)
            assert code == "403" and (body.startswith(b"nsbox: ") or "-p" in args), (args, code, body)
        assert curl(sandbox, "http://allowed.test/")[0] == "200", "the premise: the proxy works"
    assert not [r for r in world.requests() if r.startswith("198.51.100.20")]


def test_metadata_loopback_and_this_hosts_addresses_are_refused_even_when_listed(world: World) -> None:
    own = [str(a) for a in own_addresses() if a.version == 4 and not a.is_loopback]
    # Listed by name and as ranges, which is not enough: only an exact IP entry lifts the block.
    listed = ("meta.test", "169.254.0.0/16", "127.0.0.0/8", *(f"{a}/31" for a in own[:1]))
    with nsbox.NsSandbox(network=policy(world, *listed)) as sandbox:
        for url in ("http://meta.test/", "http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:3128/"):
            code, body = curl(sandbox, "--noproxy", "", url)  # through the proxy even for 127.0.0.1
            assert code == "403" and (b"blocked range" in body or b"of this host" in body), (url, code, body)
        for address in own[:1]:  # asked of the proxy only: it refuses before sending anything
            code, body = curl(sandbox, f"http://{address}/")
            assert code == "403", (address, code, body)
    assert not [r for r in world.requests() if r.startswith("169.254.169.254")]


def test_a_listed_name_that_resolves_to_a_private_address_is_refused(world: World) -> None:
    with nsbox.NsSandbox(network=policy(world, "private.test")) as sandbox:
        code, body = curl(sandbox, "http://private.test/rebound")
        assert code == "403" and b"10.0.0.5" in body, body
    assert "10.0.0.5:80 /rebound" not in world.requests()
    # The premise: that exact address, listed as such, is reached (so the refusal above was the policy's).
    with nsbox.NsSandbox(network=policy(world, "10.0.0.5")) as sandbox:
        assert curl(sandbox, "http://10.0.0.5/exact") == ("200", b"private")


def test_sensitive_ports_need_an_entry_that_names_them(world: World) -> None:
    """Port 22 of ssh.test is an SSH-like banner server: it logs each connection it accepts."""
    mark = world.mark()
    with nsbox.NsSandbox(network=policy(world, "ssh.test")) as sandbox:
        assert curl(sandbox, "-p", "http://ssh.test:22/")[0] == "403"
        code, body = curl(sandbox, "http://ssh.test:22/")
        assert code == "403" and b"port 22" in body, body
    assert not world.accepts("203.0.113.7", mark, port=22), "nothing reached port 22"
    mark = world.mark()
    with nsbox.NsSandbox(network=policy(world, "ssh.test:22")) as sandbox:
        curl(sandbox, "-p", "http://ssh.test:22/through")  # the tunnel is made; the banner is no HTTP answer
    assert world.accepts("203.0.113.7", mark, port=22), f"the tunnel reached port 22: {world.lines(mark)}"


def test_timeout_rate_and_bytes_are_enforced_and_logged(world: World, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    limits = policy(world, "slow.test", "big.test", "allowed.test", timeout=1, rate=2, max_bytes="1M")
    with nsbox.NsSandbox(network=limits, audit_log=str(log)) as sandbox:
        started = time.monotonic()
        code, _ = curl(sandbox, "http://slow.test/")
        assert code != "200" and time.monotonic() - started < 2.8, "closed at the 1 s idle timeout"
        time.sleep(1.5)  # the bucket refills
        loop = "for i in 1 2 3 4 5 6 7 8; do curl -s -o /dev/null -w '%{http_code} ' http://allowed.test/; done"
        codes = (sandbox.run(["sh", "-c", loop], capture_output=True).stdout or b"").decode().split()
        assert codes.count("429") >= 4 and "200" in codes, codes
        time.sleep(1.5)
        result = sandbox.run(["sh", "-c", "curl -s http://big.test/ | wc -c"], capture_output=True)
        assert int(result.stdout or b"0") < 4 << 20, "the download was cut at the byte limit"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    network = [e for e in events if e["event"] == "network"]
    assert any(e["host"] == "slow.test" and "idle" in str(e["reason"]) for e in network)
    assert any(e["verdict"] == "refused" and "per second" in str(e["reason"]) for e in network)
    assert any(e["host"] == "big.test" and "byte limit" in str(e["reason"]) for e in network)
    assert all({"host", "port", "address", "verdict", "bytes_out", "bytes_in"} <= set(e) for e in network)


def test_without_a_policy_there_is_only_loopback(world: World) -> None:
    probe = (
        "import os, socket\nprint(sorted(n for _, n in socket.if_nameindex()), 'HTTP_PROXY' in os.environ)\n"
        "s = socket.socket(); s.settimeout(2)\ntry:\n    s.connect(('198.51.100.10', 80))\n"
        "except OSError as e:\n    print(e.errno)"
    )
    with nsbox.NsSandbox() as sandbox:
        out = sandbox.run(["python3", "-c", probe], capture_output=True).stdout
    assert out == b"['lo'] False\n101\n", out  # ENETUNREACH


def test_the_proxy_is_the_only_way_out(world: World) -> None:
    probe = (
        "import socket\nprint(sorted(n for _, n in socket.if_nameindex()))\n"
        "s = socket.socket(); s.settimeout(2)\ntry:\n    s.connect(('198.51.100.10', 80))\n"
        "except OSError as e:\n    print(e.errno)"
    )
    with nsbox.NsSandbox(network=policy(world, "allowed.test", "198.51.100.10")) as sandbox:
        out = sandbox.run(["python3", "-c", probe], capture_output=True).stdout
        assert curl(sandbox, "http://198.51.100.10/via-proxy")[0] == "200", "the premise: listed, via the proxy"
    assert out == b"['lo']\n101\n", out


def test_the_cli_options(world: World) -> None:
    base = [NSBOX_CLI, "exec", "--net", "allow", "--allow-host", "allowed.test"]
    base += ["--add-host", "allowed.test=198.51.100.10", "--net-uplink", world.path]
    proc = subprocess.run([*base, "--", "curl", "-sS", "http://allowed.test/cli"], capture_output=True)
    assert (proc.returncode, proc.stdout) == (0, b"allowed"), proc.stderr
    for bad in (
        ["--net", "bogus"],
        ["--net", "allow", "--allow-host", ""],
        ["--net-rate", "-1"],
        ["--allow-host", "x.test"],
    ):
        proc = subprocess.run([NSBOX_CLI, "exec", *bad, "--", "true"], capture_output=True)
        assert proc.returncode == 125, (bad, proc.stderr)


def test_sandbox_client_takes_the_seeds_names(world: World) -> None:
    import asyncio

    async def fetch() -> nsbox.ExecutionResult:
        extra = policy(world)
        async with nsbox.SandboxClient(allow_network=True, allowed_hosts=["allowed.test"], network_timeout=5,
                                       network=extra) as client:  # fmt: skip
            return await client.execute_code(
                "import urllib.request\nurllib.request.urlopen('http://allowed.test/client').read()"
            )

    assert asyncio.run(fetch()).value == "b'allowed'"


def test_a_flood_of_idle_connections_is_capped_and_the_proxy_survives(world: World) -> None:
    flood = (
        "import socket\nsocks = [socket.create_connection(('127.0.0.1', 3128)) for _ in range(300)]\n"
        "last = socks[-1]; last.settimeout(5)\nprint(last.recv(100).split(b'\\r\\n')[0].decode())\n"
        "for s in socks: s.close()"
    )
    with nsbox.NsSandbox(network=policy(world, "allowed.test")) as sandbox:
        out = sandbox.run(["python3", "-c", flood], capture_output=True)
        assert out.stdout == b"HTTP/1.1 429 Too Many Requests\n", out
        time.sleep(0.2)
        assert curl(sandbox, "http://allowed.test/after-flood") == ("200", b"allowed")
