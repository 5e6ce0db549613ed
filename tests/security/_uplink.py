"""A stand-in for the internet, built for the network tests: a network namespace of our own
(``nsbox-uplink-<random>``) whose loopback holds the test hosts' addresses, and HTTP servers
inside it. Sandboxes in the tests connect out from it (``NetworkPolicy.uplink``), so even a
broken policy reaches only these servers, never this machine's network (which has a real
service at 169.254.169.254: ours lives only in this namespace).

Each server answers GET with its own body and records the request in a log, so that a test
can assert that nothing arrived."""

from __future__ import annotations

import secrets
import subprocess  # nosec B404  # the tests' own commands
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: name -> (address, port, body); "slow" answers after 3 s, "big" sends 4 MiB.
HOSTS = {
    "allowed.test": ("198.51.100.10", 80, b"allowed"),
    "denied.test": ("198.51.100.20", 80, b"denied"),
    "private.test": ("10.0.0.5", 80, b"private"),
    "meta.test": ("169.254.169.254", 80, b"metadata"),
    "slow.test": ("198.51.100.30", 80, b"slow"),
    "big.test": ("198.51.100.40", 80, b"big"),
    "ssh.test": ("203.0.113.7", 22, b"ssh"),
}

SERVER = r"""
import http.server, sys, threading, time
log = open(sys.argv[1], "a", buffering=1)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ip, port = self.server.server_address[:2]
        log.write(f"{ip}:{port} {self.path}\n")
        body = self.server.body
        if body == b"slow":
            time.sleep(3)
        if body == b"big":
            body = b"x" * (4 << 20)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
for spec in sys.argv[2:]:
    ip, port, body = spec.split(",")
    server = http.server.ThreadingHTTPServer((ip, int(port)), Handler)
    server.body = body.encode()
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


class Uplink:
    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"
        self.log = log

    def requests(self) -> list[str]:
        return self.log.read_text().splitlines()

    def hosts(self) -> dict[str, str]:
        return {name: address for name, (address, _, _) in HOSTS.items()}


@contextmanager
def uplink(tmp: Path) -> Iterator[Uplink]:
    name = f"nsbox-uplink-{secrets.token_hex(4)}"
    log = tmp / "requests.log"
    log.write_text("")
    subprocess.run(["ip", "netns", "add", name], check=True)
    server = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        for address, _, _ in HOSTS.values():
            subprocess.run(["ip", "-n", name, "addr", "add", f"{address}/32", "dev", "lo"], check=True)
        specs = [f"{a},{p},{b.decode()}" for a, p, b in HOSTS.values()]
        server = subprocess.Popen(
            ["ip", "netns", "exec", name, sys.executable, "-c", SERVER, str(log), *specs],
            stdout=subprocess.PIPE,
        )
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        yield Uplink(name, log)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for _ in range(50):  # the namespace goes once its last socket has
            if subprocess.run(["ip", "netns", "del", name], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
