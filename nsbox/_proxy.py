"""The egress proxy of a sandbox whose network policy is ``allow``.

A sandbox never gets a route out: its network namespace has only ``lo``. The supervisor
forks this proxy; a short-lived child of it enters the sandbox's network namespace, creates
a listening socket on the sandbox's 127.0.0.1:3128 and hands it over, so the proxy itself
stays in the supervisor's namespace (or enters the policy's ``uplink``) and makes every
connection from there. So the only way out is a socket that
a process outside the sandbox owns, and the sandbox's only means of using it is to ask:
``CONNECT host:port`` (a tunnel) or an absolute-form HTTP request. Each request is decided
by ``_netpolicy`` (allowlist, sensitive ports, blocked addresses after resolution), limited
(new connections per second, bytes for the sandbox's life, connect and idle timeouts) and
logged (one ``network`` audit event per attempt).

Everything a sandbox sends here is untrusted: request heads are capped (``HEAD_LIMIT`` bytes
and ``MAX_HEADER_FIELDS`` lines, whether they arrive in pieces or whole), parsed strictly,
and must arrive within the timeout. The proxy is single-threaded (selectors); a name is
resolved with the blocking getaddrinfo, once, and the connection goes to the address that
was checked, never to a second resolution.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import selectors
import signal
import socket
import time
import urllib.parse
from collections.abc import Iterable

import prctl

from . import _linux
from ._audit import AuditLog
from ._egress import HelperFailed, RateBucket, fork_helper, own_addresses
from ._fds import close_all_but, close_fds, stdio_to_devnull
from ._net import socket_in_namespace
from ._netpolicy import Entry, IPAddress, Verdict, check_addresses, check_host, parse_allowlist
from ._spec import PROXY_ADDRESS, NetworkPolicy

HEAD_LIMIT = 16 * 1024  #: bytes of a request head, its final empty line included
MAX_HEADER_FIELDS = 100  #: header lines of a request (as Apache's LimitRequestFields)
MAX_CONNECTIONS = 256
CHUNK = 64 * 1024
_HOP_HEADERS = {b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive"}
_STATUS_TEXT = {403: "Forbidden", 429: "Too Many Requests", 400: "Bad Request", 502: "Bad Gateway",
                504: "Gateway Timeout", 431: "Request Header Fields Too Large", 408: "Request Timeout"}  # fmt: skip


def start(policy: NetworkPolicy, netns_fd: int, userns_fd: int | None, audit: AuditLog) -> tuple[int, int]:
    """Fork the proxy; returns its pid and a pidfd once it listens in the sandbox's network
    namespace (``netns_fd``; entered through the sandbox's user namespace ``userns_fd`` when
    rootless), or raises OSError (with the step in ``call``) if it could not."""
    own = own_addresses()
    try:
        return fork_helper(
            policy.uplink, lambda uplink, ready: _main(policy, (netns_fd, userns_fd), uplink, ready, own, audit)
        )
    except HelperFailed as failed:
        raise _linux.SyscallError(errno.EIO, "egress proxy", str(failed)) from None


def _main(
    policy: NetworkPolicy,
    ns_fds: tuple[int, int | None],
    uplink: int | None,
    ready: int,
    own: tuple[IPAddress, ...],
    audit: AuditLog,
) -> None:
    try:
        prctl.set_pdeathsig(signal.SIGKILL)
        prctl.set_name("nsbox-egress")
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is the CLI's to handle
        stdio_to_devnull()
        keep = [fd for fd in (*ns_fds, uplink) if fd is not None]
        close_all_but(0, 1, 2, ready, *keep, *audit.fds())
        listener = socket_in_namespace(*ns_fds, socket.SOCK_STREAM, PROXY_ADDRESS)
        close_fds([fd for fd in ns_fds if fd is not None])
        if uplink is not None:
            _linux.setns(uplink, _linux.CLONE_NEWNET)  # every connection out is made from there
            os.close(uplink)
    except OSError as exc:
        os.write(ready, f"{getattr(exc, 'call', 'setup')}: {exc}".encode()[:500])
        return
    os.write(ready, b"ok")
    os.close(ready)
    Proxy(listener, policy, own, audit).serve()


class _Conn:
    """A client connection, and its upstream once allowed."""

    def __init__(self, client: socket.socket, deadline: float) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.state = "head"  # -> connecting -> relay
        self.head = bytearray()
        self.to_client = bytearray()
        self.to_upstream = bytearray()
        self.deadline = deadline
        self.host = ""
        self.port = 0
        self.address: str | None = None
        self.tunnel = False
        self.bytes_out = 0
        self.bytes_in = 0
        self.logged = False
        self.closing = False  # flush to_client, then close


class Proxy:
    def __init__(
        self, listener: socket.socket, policy: NetworkPolicy, own: Iterable[IPAddress], audit: AuditLog
    ) -> None:
        self.listener = listener
        self.policy = policy
        self.entries: tuple[Entry, ...] = parse_allowlist(policy.allowed_hosts)
        self.hosts = dict(policy.hosts)
        self.own = tuple(own)
        self.audit = audit
        self.bucket = RateBucket(policy.rate)
        self.bytes_used = 0
        self.selector = selectors.DefaultSelector()
        self.conns: set[_Conn] = set()

    def serve(self) -> None:
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        while True:
            now = time.monotonic()
            wait = min((c.deadline for c in self.conns), default=now + 60) - now
            for key, events in self.selector.select(max(0.0, wait)):
                if key.data is None:
                    self._accept()
                    continue
                conn, side = key.data
                if conn in self.conns:
                    self._event(conn, side, events)
            now = time.monotonic()
            for conn in [c for c in self.conns if c.deadline <= now]:
                self._expire(conn)
                if conn in self.conns:  # a refusal to write back first
                    self._interest(conn)

    # -- connections ---------------------------------------------------------------------------
    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError, ConnectionAbortedError):
            client, _ = self.listener.accept()
            client.setblocking(False)
            if len(self.conns) >= MAX_CONNECTIONS:  # each costs us an fd: a sandbox gets so many at once
                with contextlib.suppress(OSError):
                    client.send(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                client.close()
                return
            conn = _Conn(client, time.monotonic() + self.policy.timeout)
            self.conns.add(conn)
            self._interest(conn)

    def _event(self, conn: _Conn, side: str, events: int) -> None:
        try:
            if side == "upstream" and conn.state == "connecting":
                self._connected(conn)
            if events & selectors.EVENT_WRITE:
                self._flush(conn, side)
            if events & selectors.EVENT_READ and conn in self.conns:
                self._read(conn, side)
        except OSError:
            self._close(conn)
            return
        if conn in self.conns:
            self._interest(conn)

    def _read(self, conn: _Conn, side: str) -> None:
        sock = conn.client if side == "client" else conn.upstream
        assert sock is not None  # nosec B101  # registered only while it exists
        data = sock.recv(CHUNK)
        if not data:
            if side == "client" or not conn.to_client:
                self._close(conn)
            else:
                conn.closing = True
            return
        conn.deadline = time.monotonic() + self.policy.timeout  # idle timeout
        if side == "client" and conn.state == "head":
            conn.head += data
            self._head(conn)
            return
        self.bytes_used += len(data)
        if side == "client":
            conn.bytes_out += len(data)
            conn.to_upstream += data
        else:
            conn.bytes_in += len(data)
            conn.to_client += data
        if self.policy.max_bytes is not None and self.bytes_used > self.policy.max_bytes:
            self._close(conn, "the sandbox's network byte limit was reached")

    def _flush(self, conn: _Conn, side: str) -> None:
        sock, buffer = (conn.client, conn.to_client) if side == "client" else (conn.upstream, conn.to_upstream)
        if sock is None or not buffer:
            return
        with contextlib.suppress(BlockingIOError):
            sent = sock.send(buffer)
            del buffer[:sent]
        if side == "client" and conn.closing and not conn.to_client:
            self._close(conn)

    def _interest(self, conn: _Conn) -> None:
        for side, sock in (("client", conn.client), ("upstream", conn.upstream)):
            if sock is None:
                continue
            mine, theirs = (conn.to_client, conn.to_upstream)
            if side == "upstream":
                mine, theirs = theirs, mine
            events = 0
            if len(theirs) < CHUNK * 4 and not conn.closing:  # back-pressure
                events |= selectors.EVENT_READ
            if mine or (side == "upstream" and conn.state == "connecting"):
                events |= selectors.EVENT_WRITE
            try:
                key = self.selector.get_key(sock)
            except KeyError:
                if events:
                    self.selector.register(sock, events, (conn, side))
                continue
            if not events:
                self.selector.unregister(sock)
            elif key.events != events:
                self.selector.modify(sock, events, (conn, side))

    def _expire(self, conn: _Conn) -> None:
        if conn.state == "head":
            self._refuse(conn, Verdict("the request did not arrive in time", 408))
        elif conn.state == "connecting":
            self._refuse(conn, Verdict(f"no connection within {self.policy.timeout:g} s", 504))
        else:
            self._close(conn, f"idle for {self.policy.timeout:g} s")

    def _close(self, conn: _Conn, reason: str | None = None) -> None:
        for sock in (conn.client, conn.upstream):
            if sock is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(sock)
                sock.close()
        self.conns.discard(conn)
        if not conn.logged and conn.host:
            self._log(conn, "allowed", reason)

    def _log(self, conn: _Conn, verdict: str, reason: str | None) -> None:
        conn.logged = True
        self.audit.network(
            host=conn.host,
            port=conn.port,
            address=conn.address,
            verdict=verdict,
            reason=reason,
            bytes_out=conn.bytes_out,
            bytes_in=conn.bytes_in,
        )

    def _refuse(self, conn: _Conn, verdict: Verdict) -> None:
        if conn.host:
            self._log(conn, "refused", verdict.reason)
        body = f"nsbox: {verdict.reason}\n".encode()
        text = _STATUS_TEXT.get(verdict.status, "Error")
        conn.to_client += (
            f"HTTP/1.1 {verdict.status} {text}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body
        if conn.upstream is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(conn.upstream)
            conn.upstream.close()
            conn.upstream = None
        conn.state, conn.closing = "refused", True
        conn.deadline = time.monotonic() + self.policy.timeout

    # -- the request -----------------------------------------------------------------------------
    def _head(self, conn: _Conn) -> None:
        end = conn.head.find(b"\r\n\r\n")
        size = len(conn.head) if end < 0 else end + 4  # whole or not yet: too large is too large
        if size > HEAD_LIMIT:
            self._refuse(conn, Verdict(f"the request head is larger than {HEAD_LIMIT} bytes", 431))
            return
        if end < 0:
            return
        head, rest = bytes(conn.head[:end]), bytes(conn.head[end + 4 :])
        lines = head.split(b"\r\n")
        if len(lines) - 1 > MAX_HEADER_FIELDS:
            self._refuse(conn, Verdict(f"the request has more than {MAX_HEADER_FIELDS} header lines", 431))
            return
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._refuse(conn, Verdict("not an HTTP/1.x proxy request", 400))
            return
        method, target, version = (p.decode("latin-1") for p in parts)
        try:
            if method == "CONNECT":
                host, port = _authority(target)
                conn.tunnel = True
            else:
                url = urllib.parse.urlsplit(target)
                if url.scheme != "http" or not url.hostname:
                    raise ValueError("only http:// URLs; use CONNECT for anything else")
                host, port = url.hostname, url.port or 80
                path = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
                headers = [line for line in lines[1:] if line.split(b":", 1)[0].strip().lower() not in _HOP_HEADERS]
                request = f"{method} {path} {version}\r\n".encode("latin-1")
                conn.to_upstream += request + b"".join(h + b"\r\n" for h in headers) + b"Connection: close\r\n\r\n"
            conn.to_upstream += rest
        except ValueError as exc:
            self._refuse(conn, Verdict(f"bad request target: {exc}", 400))
            return
        conn.host, conn.port = host, port
        conn.head = bytearray()
        self._decide(conn)

    def _decide(self, conn: _Conn) -> None:
        pending = len(conn.to_upstream)  # the forwarded head, and what came with it, leave too
        if self.policy.max_bytes is not None and self.bytes_used + pending > self.policy.max_bytes:
            self._refuse(conn, Verdict("the sandbox's network byte limit was reached", 429))
            return
        if not self.bucket.take():
            self._refuse(conn, Verdict(f"more than {self.policy.rate:g} new connections per second", 429))
            return
        verdict = check_host(self.entries, conn.host, conn.port)
        if not verdict.allowed:
            self._refuse(conn, verdict)
            return
        addresses = self._resolve(conn.host, conn.port)
        verdict = check_addresses(self.entries, addresses, self.own)
        if not verdict.allowed:
            conn.address = str(addresses[0]) if addresses else None
            self._refuse(conn, verdict)
            return
        address = addresses[0]
        conn.address = str(address)
        conn.bytes_out += pending
        self.bytes_used += pending
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        upstream = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        upstream.setblocking(False)
        conn.upstream, conn.state = upstream, "connecting"
        conn.deadline = time.monotonic() + self.policy.timeout
        try:
            upstream.connect((str(address), conn.port))
        except BlockingIOError:
            pass
        except OSError as exc:
            self._refuse(conn, Verdict(f"cannot connect to {address}:{conn.port}: {exc.strerror}", 502))

    def _resolve(self, host: str, port: int) -> list[IPAddress]:
        name = host.lower().rstrip(".")
        if name in self.hosts:
            return [ipaddress.ip_address(self.hosts[name])]
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return []
        return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))

    def _connected(self, conn: _Conn) -> None:
        assert conn.upstream is not None  # nosec B101  # state connecting
        err = conn.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._refuse(conn, Verdict(f"cannot connect to {conn.address}:{conn.port}: {os.strerror(err)}", 502))
            return
        conn.state = "relay"
        conn.deadline = time.monotonic() + self.policy.timeout
        if conn.tunnel:
            conn.to_client += b"HTTP/1.1 200 Connection established\r\n\r\n"


def _authority(target: str) -> tuple[str, int]:
    """CONNECT's ``host:port`` (``[v6]:port``)."""
    if target.startswith("["):
        host, _, port = target[1:].partition("]:")
    else:
        host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{target[:100]!r} is not host:port")
    return host, int(port)
