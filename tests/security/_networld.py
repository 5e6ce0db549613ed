"""A private little internet for the network tests (``test_network_policy.py``,
``test_egress.py``, ``test_routed.py``).

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

``routed_world()`` is the same hosts behind an uplink: the servers' namespace is reached
through a veth pair from a second one that forwards (where routed sandboxes' veths end), and
holds a UDP echo, git's files for its dumb HTTP protocol and a DNS server with TTLs too.
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
import http.server, json, socket, socketserver, sys, threading, time
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
    def server_bind(self):  # without HTTPServer's getfqdn: no DNS query leaves for a name
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "test", self.server_address[1]
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

def udp_echo(sock, ip, port):
    while True:
        data, peer = sock.recvfrom(2048)
        note(f"request {ip}:{port} udp")
        sock.sendto(data, peer)

def dns(sock, ip, port, names):
    # RFC 1035, written apart from nsbox's own codec: one question, A records only
    while True:
        data, peer = sock.recvfrom(2048)
        try:
            end, labels = 12, []
            while data[end]:
                labels.append(data[end + 1 : end + 1 + data[end]].decode().lower())
                end += 1 + data[end]
            question = data[12 : end + 5]
            qtype = int.from_bytes(data[end + 1 : end + 3], "big")
        except (IndexError, UnicodeDecodeError):
            continue
        name = ".".join(labels)
        note(f"dns {name} {qtype}")
        found = names.get(name)
        head = data[:2] + (0x8180 | (0 if found else 3)).to_bytes(2, "big") + b"\x00\x01"
        if found and qtype == 1:
            address, ttl = found
            record = b"\xc0\x0c\x00\x01\x00\x01" + ttl.to_bytes(4, "big") + b"\x00\x04" + socket.inet_aton(address)
            sock.sendto(head + b"\x00\x01\x00\x00\x00\x00" + question + record, peer)
        else:
            sock.sendto(head + b"\x00\x00\x00\x00\x00\x00" + question, peer)

class Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        note(f"request {self.server.server_address[0]}:{self.server.server_address[1]} {self.path}")

black = "none"
for ip, port, kind, body in servers:
    if kind in ("udpecho", "dns"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ip, port))
        args = (sock, ip, port) + ((json.loads(body),) if kind == "dns" else ())
        threading.Thread(target=udp_echo if kind == "udpecho" else dns, args=args, daemon=True).start()
    elif kind == "files":
        handler = lambda *a, directory=body: Files(*a, directory=directory)
        server = Server((ip, port), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    elif kind == "banner":
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
    resolver: str | None = None  #: the world's DNS server (routed_world)

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


#: The routed world's DNS (``routed_world``): name -> (address, TTL in seconds).
ROUTED_NAMES = {
    "api.test": ("198.51.100.10", 300),
    "short.test": ("198.51.100.11", 2),
    "denied.test": ("198.51.100.20", 300),
    "private.test": ("10.0.0.5", 300),
    "meta.test": ("169.254.169.254", 300),
    "big.test": ("198.51.100.40", 300),
}
RESOLVER = "198.51.100.53"
UPLINK_SIDE, HOSTS_SIDE = "198.18.0.1", "198.18.0.2"  #: the routed world's inner link (a blocked range)
UDP_ECHO_PORT = 7
GIT_PORT = 8000


def _own_and_neighbour() -> tuple[str, str | None]:
    """An address of this host (first global IPv4 of our namespace) and one next to it that
    is neither ours nor blocked (None if its /30 has none)."""
    own_interfaces = global_ipv4_addresses()  # in our namespace: where supervisors and proxies start
    assert own_interfaces, "premise: this host has a global IPv4 address"
    own_set = {str(i.ip) for i in own_interfaces}
    own = str(own_interfaces[0].ip)
    for candidate in ipaddress.ip_network(f"{own}/30", strict=False).hosts():
        if str(candidate) not in own_set and not any(candidate in n for n in CONTRACT_BLOCKED):
            return own, str(candidate)
    return own, None


@contextmanager
def _servers(namespace: NetNamespace, tmp: Path, servers: list[tuple[str, int, str, str]]) -> Iterator[tuple[int, str]]:
    """The one server process, inside ``namespace`` with every server address on its lo:
    its pid and what the black hole probe found. Killed on the way out."""
    log = tmp / "requests.log"
    log.write_text("")
    server: subprocess.Popen[bytes] | None = None
    with (tmp / "server.err").open("wb") as errors:
        try:
            namespace.add_local_addresses(a for a, _, _, _ in servers)
            argv = [sys.executable, "-c", SERVER_PROGRAM, str(log), json.dumps(servers)]
            server = namespace.popen([*argv, str(SLOW_SECONDS), str(BIG_BYTES)], stdout=subprocess.PIPE, stderr=errors)
            assert server.stdout is not None
            ready = server.stdout.readline().split()
            assert ready[:1] == [b"ready"], (ready, (tmp / "server.err").read_text())
            yield server.pid, ready[1].decode()
        finally:
            if server is not None:
                server.kill()
                server.wait()


def _git_repository(tmp: Path) -> Path:
    """A bare repository with one commit, ready for git's dumb HTTP protocol: served as files."""
    work, served = tmp / "git-work", tmp / "git-served"
    served.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@test", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@test", "HOME": str(tmp), "PATH": "/usr/bin:/bin"}  # fmt: skip
    for argv in (
        ["git", "init", "-q", "-b", "main", str(work)],
        ["git", "-C", str(work), "commit", "-q", "--allow-empty", "-m", "routed"],
        ["git", "clone", "-q", "--bare", str(work), str(served / "repo.git")],
        ["git", "-C", str(served / "repo.git"), "update-server-info"],
    ):
        subprocess.run(argv, check=True, env=env, capture_output=True)
    served.chmod(0o755)
    for path in served.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return served


@contextmanager
def routed_world(tmp: Path) -> Iterator[World]:
    """For ``--net routed``: an uplink namespace (``World.path``, where sandboxes' veths end)
    that forwards, through a veth of its own, into a second namespace holding the test
    hosts (as ``network_world``), a UDP echo on api.test:7, git's files on api.test:8000 and
    a DNS server (``RESOLVER``) answering ``ROUTED_NAMES`` with their TTLs. Both namespaces
    are removed on the way out."""
    token = secrets.token_hex(4)
    own, neighbour = _own_and_neighbour()
    api = ROUTED_NAMES["api.test"][0]
    servers = [
        *SERVERS,
        (own, 80, "http", "own"),
        (ROUTED_NAMES["short.test"][0], 80, "http", "short"),
        (api, UDP_ECHO_PORT, "udpecho", ""),
        (api, GIT_PORT, "files", str(_git_repository(tmp))),
        (RESOLVER, 53, "dns", json.dumps(ROUTED_NAMES)),
    ]
    if neighbour is not None:
        servers.append((neighbour, 80, "http", "neighbour"))
    with NetNamespace(f"nsbox-uplink-{token}") as uplink, NetNamespace(f"nsbox-hosts-{token}") as hosts:
        assert not {own, neighbour} & {UPLINK_SIDE, HOSTS_SIDE}, "premise: the world's link is none of this host's"
        uplink.forward_into(hosts, "world0", ipaddress.IPv4Network(f"{UPLINK_SIDE}/30", strict=False))
        with _servers(hosts, tmp, servers) as (pid, black):
            yield World(uplink.name, tmp / "requests.log", own, neighbour, black, pid, resolver=RESOLVER)


@contextmanager
def network_world(tmp: Path) -> Iterator[World]:
    own, neighbour = _own_and_neighbour()
    servers = [*SERVERS, (own, 80, "http", "own")]
    if neighbour is not None:
        servers.append((neighbour, 80, "http", "neighbour"))
    with (
        NetNamespace(f"nsbox-uplink-{secrets.token_hex(4)}") as namespace,
        _servers(namespace, tmp, servers) as (pid, black),
    ):
        hosts = {**BASE_HOSTS, **EXTRA_HOSTS, "self.test": own}
        yield World(namespace.name, tmp / "requests.log", own, neighbour, black, pid, hosts)
