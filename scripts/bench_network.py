#!/usr/bin/env python3
"""The network modes' costs, measured in the same run on the same machine (root only).

A world of our own (no packet leaves this machine): an uplink network namespace forwarding
into a second one, where an HTTP server sends ``--megabytes`` MB from memory. Measured:
a new sandbox started, ``/bin/true`` run in it and closed, with ``--net none`` (the
baseline), ``allow`` (the egress proxy) and ``routed`` (a veth pair, the router's nftables
table and DNS); then the transfer, timed by curl inside the sandbox, through the proxy and
through the routed veth.

    .venv/bin/python scripts/bench_network.py [--runs 30] [--megabytes 100] [--json bench-network.json]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

import nsbox
from nsbox import NetworkPolicy
from nsbox._netlink import NetNamespace

SERVER = "198.51.100.10"
NAME = "bulk.test"
SERVE = r"""
import http.server, socketserver, sys
size = int(sys.argv[1]); chunk = b"x" * (1 << 20)
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(size)); self.end_headers()
        left = size
        while left:
            self.wfile.write(chunk[: min(left, len(chunk))]); left -= min(left, len(chunk))
    def log_message(self, *args): pass
class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):  # no getfqdn: no DNS query
        socketserver.TCPServer.server_bind(self); self.server_name, self.server_port = "bench", 80
server = Server((sys.argv[2], 80), Handler)
print("ready", flush=True)
server.serve_forever()
"""


def start_run_close(policy: NetworkPolicy) -> float:
    began = time.perf_counter()
    with nsbox.NsSandbox(network=policy) as sandbox:
        sandbox.run(["/bin/true"])
    return (time.perf_counter() - began) * 1000


def transfer(policy: NetworkPolicy, megabytes: int) -> float:
    """MB/s of one transfer, as curl inside the sandbox timed it."""
    with nsbox.NsSandbox(network=policy) as sandbox:
        done = sandbox.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", f"http://{NAME}/"],
            capture_output=True,
            timeout=300,
        )
    size, seconds = (done.stdout or b"0 1").split()
    assert int(size) == megabytes << 20, done
    return int(size) / float(seconds) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="sandboxes started per mode (30)")
    parser.add_argument("--megabytes", type=int, default=100, help="size of the transfer (100)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("routed mode needs root: run the network benchmark as root", file=sys.stderr)
        return 1
    token = secrets.token_hex(4)
    with NetNamespace(f"nsbox-bench-up-{token}") as uplink, NetNamespace(f"nsbox-bench-hosts-{token}") as hosts:
        uplink.forward_into(hosts, "bench0", ipaddress.IPv4Network("198.18.0.0/30"))
        hosts.add_local_addresses([SERVER])
        server = hosts.popen([sys.executable, "-c", SERVE, str(args.megabytes << 20), SERVER], stdout=subprocess.PIPE)
        try:
            assert server.stdout is not None and server.stdout.readline() == b"ready\n"
            common = {"uplink": uplink.path, "hosts": ((NAME, SERVER),)}
            policies = {
                "none": NetworkPolicy(),
                "allow": NetworkPolicy("allow", (NAME,), **common),  # type: ignore[arg-type]
                "routed": NetworkPolicy("routed", (NAME,), **common),  # type: ignore[arg-type]
            }
            starts = {}
            for mode, policy in policies.items():
                start_run_close(policy)  # warm-up
                starts[mode] = [start_run_close(policy) for _ in range(args.runs)]
                print(f"  measured: start with --net {mode}", file=sys.stderr)
            rates = {mode: [transfer(policies[mode], args.megabytes) for _ in range(3)] for mode in ("allow", "routed")}
            print("  measured: transfers", file=sys.stderr)
        finally:
            server.kill()
            server.wait()
    base = statistics.median(starts["none"])
    print(f"\nnew sandbox + /bin/true + close, by network mode ({args.runs} runs each):")
    print(f"{'--net':8} {'median ms':>10} {'p90 ms':>8} {'x none':>7}")
    results: dict[str, object] = {"start": {}, "transfer_mb_s": {}, "megabytes": args.megabytes}
    for mode, samples in starts.items():
        median, p90 = statistics.median(samples), statistics.quantiles(samples, n=10)[-1]
        print(f"{mode:8} {median:10.1f} {p90:8.1f} {median / base:7.2f}")
        results["start"][mode] = {"median_ms": median, "p90_ms": p90, "ratio_to_none": median / base}  # type: ignore[index]
    print(f"\n{args.megabytes} MB fetched by curl inside the sandbox (median of 3):")
    for mode, label in (("allow", "through the egress proxy"), ("routed", "through the routed veth")):
        rate = statistics.median(rates[mode])
        print(f"  {label:28} {rate:8.0f} MB/s")
        results["transfer_mb_s"][mode] = rate  # type: ignore[index]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
