"""A private little internet for the network tests (``test_network_policy.py``,
``test_egress.py``).

``network_world()`` creates a network namespace of its own (``nsbox-uplink-<random>``, by
netlink: ``nsbox._netlink.NetNamespace``), puts every test host's address on its ``lo``, then
starts ONE server process inside it that serves all of them from threads:

* HTTP servers that answer ``GET`` with a body of their own (``allowed``, ``denied``,
  ``metadata``...), one that sleeps before answering (``slow``) and one that sends 4 MiB
  (``big``);
* a plain TCP server on port 22 of 203.0.113.7 that sends an SSH-like banner;
* a "black hole" on 198.51.100.50:80: a listener whose accept queue is kept full, so that
  a connect() to it never completes (the connect timeout's target);
* a fake of this host's own address (the first global IPv4 of the init namespace) and a
  loopback server on the uplink's 127.0.0.1:8080, so that a policy that wrongly let them
  through would show up as a request here, not on this machine.

Every server writes ``accept ADDRESS:PORT`` when it accepts a connection and ``request
ADDRESS:PORT PATH`` for each request into a log, so that a test can assert that nothing
arrived. Sandboxes in the tests make their connections out from this namespace
(``NetworkPolicy.uplink``), so even a broken policy can only ever reach these servers.
Nothing here sends a packet outside the namespace; teardown kills the one process it started
and removes the namespace.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess  # nosec B404  # the tests' own commands
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nsbox._netlink import NetNamespace, global_ipv4_addresses

SLOW_SECONDS = 4.0
BIG_BYTES = 4 << 20
LOOPBACK_PORT = 8080

#: name -> address, for NetworkPolicy.hosts: every name the tests use points into the world.
BASE_HOSTS = {
    "allowed.test": "198.51.100.10",
    "denied.test": "198.51.100.20",
    "private.test": "10.0.0.5",
    "meta.test": "169.254.169.254",
}
EXTRA_HOSTS = {
    "slow.test": "198.51.100.30",
    "big.test": "198.51.100.40",
    "blackhole.test": "198.51.100.50",
    "ssh.test": "203.0.113.7",
    "test": "198.51.100.10",  # the bare domain of the wildcard test
    "loop.test": "127.0.0.1",
}

#: (address, port, kind, body) of the servers; the host-address ones are added at run time.
SERVERS = [
    ("198.51.100.10", 80, "http", "allowed"),
    ("198.51.100.20", 80, "http", "denied"),
    ("10.0.0.5", 80, "http", "private"),
    ("169.254.169.254", 80, "http", "metadata"),
    ("198.51.100.30", 80, "slow", "slow"),
    ("198.51.100.40", 80, "big", "big"),
    ("198.51.100.50", 80, "blackhole", ""),
    ("203.0.113.7", 22, "banner", "SSH-2.0-nsbox-test"),
    ("203.0.113.7", 80, "http", "doc80"),
    ("127.0.0.1", LOOPBACK_PORT, "http", "loopback"),
]

SERVER_PROGRAM = r"""
import http.server, json, socket, sys, threading, time
log = open(sys.argv[1], "a", buffering=1)
servers = json.loads(sys.argv[2])
slow_seconds, big_bytes = float(sys.argv[3]), int(sys.argv[4])
lock = threading.Lock()
keep = []

def note(text):
    with lock:
        log.write(text + "\n")

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    def verify_request(self, request, client_address):
        note(f"accept {self.server_address[0]}:{self.server_address[1]}")
        return True
    def handle_error(self, request, client_address):
        pass

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        ip, port = self.server.server_address[:2]
        note(f"request {ip}:{port} {self.path}")
        body = self.server.body
        if self.server.kind == "slow":
            time.sleep(slow_seconds)
        if self.server.kind == "big":
            body = b"x" * big_bytes
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

def banner(listener, ip, port, body):
    def talk(conn):
        with conn:
            try:
                conn.sendall(body + b"\r\n")
                conn.settimeout(5)
                line = conn.makefile("rb").readline().split()
                note(f"request {ip}:{port} {line[1].decode(errors='replace') if len(line) > 1 else '-'}")
            except OSError:
                pass
    while True:
        conn, _ = listener.accept()
        note(f"accept {ip}:{port}")
        threading.Thread(target=talk, args=(conn,), daemon=True).start()

black = "none"
for ip, port, kind, body in servers:
    if kind == "banner":
        listener = socket.create_server((ip, port))
        threading.Thread(target=banner, args=(listener, ip, port, body.encode()), daemon=True).start()
    elif kind == "blackhole":
        # An accept queue of 0 that is full: SYNs are dropped, a connect() never completes.
        listener = socket.socket()
        listener.bind((ip, port))
        listener.listen(0)
        filler = socket.socket()
        filler.settimeout(3)
        try:
            filler.connect((ip, port))
        except OSError:
            pass
        probe = socket.socket()
        probe.settimeout(1.5)
        try:
            probe.connect((ip, port))
            black = "open"
        except socket.timeout:
            black = "black"
        except OSError as exc:
            black = f"error {exc}"
        keep += [listener, filler, probe]
    else:
        server = Server((ip, port), Handler)
        server.kind, server.body = kind, body.encode()
        threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", black, flush=True)
threading.Event().wait()
"""

#: The contract's always-blocked IPv4 ranges (unless the exact address is listed).
CONTRACT_BLOCKED = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
]


@dataclass
class World:
    name: str
    log: Path
    own: str  #: an address of this host (also faked inside the world: body "own")
    neighbour: str | None  #: an address next to it, not this host's and not blocked (body "neighbour")
    blackhole: str  #: "black" when the black hole really swallows connects
    server_pid: int  #: the one process that belongs in the namespace
    hosts: dict[str, str] = field(default_factory=dict)  #: NetworkPolicy.hosts for every sandbox

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def lines(self, since: int = 0) -> list[str]:
        return self.log.read_text().splitlines()[since:]

    def mark(self) -> int:
        return len(self.lines())

    def accepts(self, address: str, since: int = 0, port: int | None = None) -> list[str]:
        prefix = f"accept {address}:" + ("" if port is None else f"{port}")
        return [line for line in self.lines(since) if line.startswith(prefix)]

    def requested(self, address: str, port: int, path: str) -> bool:
        return f"request {address}:{port} {path}" in self.lines()

    def requests(self) -> list[str]:
        """Every request so far, as ``ADDRESS:PORT PATH``."""
        return [line.removeprefix("request ") for line in self.lines() if line.startswith("request ")]


@contextmanager
def network_world(tmp: Path) -> Iterator[World]:
    name = f"nsbox-uplink-{secrets.token_hex(4)}"
    log = tmp / "requests.log"
    log.write_text("")
    errors = (tmp / "server.err").open("wb")
    own_interfaces = global_ipv4_addresses()  # in our namespace: where supervisors and proxies start
    assert own_interfaces, "premise: this host has a global IPv4 address"
    own_set = {str(i.ip) for i in own_interfaces}
    own = str(own_interfaces[0].ip)
    neighbour = None
    for candidate in ipaddress.ip_network(f"{own}/30", strict=False).hosts():
        if str(candidate) not in own_set and not any(candidate in n for n in CONTRACT_BLOCKED):
            neighbour = str(candidate)
            break
    servers = [*SERVERS, (own, 80, "http", "own")]
    if neighbour is not None:
        servers.append((neighbour, 80, "http", "neighbour"))
    server: subprocess.Popen[bytes] | None = None
    with NetNamespace(name) as namespace:
        try:
            namespace.add_local_addresses(a for a, _, _, _ in servers)
            argv = [sys.executable, "-c", SERVER_PROGRAM, str(log), json.dumps(servers)]
            server = namespace.popen([*argv, str(SLOW_SECONDS), str(BIG_BYTES)], stdout=subprocess.PIPE, stderr=errors)
            assert server.stdout is not None
            ready = server.stdout.readline().split()
            assert ready[:1] == [b"ready"], (ready, (tmp / "server.err").read_text())
            hosts = {**BASE_HOSTS, **EXTRA_HOSTS, "self.test": own}
            yield World(name, log, own, neighbour, ready[1].decode(), server.pid, hosts)
        finally:
            if server is not None:
                server.kill()
                server.wait()
            errors.close()
