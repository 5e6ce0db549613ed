"""What the two ways out share: the egress proxy (``_proxy``, network ``allow``) and the
router (``_routed``, network ``routed``) both refuse this host's own addresses and count
events per second."""

from __future__ import annotations

import contextlib
import ipaddress
import time

from ._netpolicy import IPAddress


def own_addresses() -> tuple[IPAddress, ...]:
    """This host's addresses (read in its own network namespace, before forking)."""
    found: list[IPAddress] = []
    with contextlib.suppress(OSError), open("/proc/net/fib_trie", encoding="ascii") as fib:
        last = None
        for line in fib:  # "|-- 10.0.2.15" then, for an address of ours, "/32 host LOCAL"
            text = line.strip()
            if text.startswith("|-- "):
                last = text[4:]
            elif text == "/32 host LOCAL" and last is not None:
                found.append(ipaddress.IPv4Address(last))
    with contextlib.suppress(OSError), open("/proc/net/if_inet6", encoding="ascii") as inet6:
        found += [ipaddress.IPv6Address(int(line.split()[0], 16)) for line in inet6]
    return tuple(dict.fromkeys(found))


class RateBucket:
    """Events (new connections, DNS queries) per second, with a burst of the same size."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = max(rate, 1.0)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
