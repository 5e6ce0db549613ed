"""The network namespace. With the default policy it holds only ``lo``, brought up here.

Bringing one interface up is a single ioctl (netdevice(7)); pyroute2 costs ~200 ms to
import, so it is loaded only by the network policies that build veth pairs.
"""

from __future__ import annotations

import fcntl
import socket
import struct

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, ifr_flags, padding to 40 bytes


def loopback_up_in_child() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        (_, flags) = _IFREQ.unpack(fcntl.ioctl(sock, _SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0)))
        fcntl.ioctl(sock, _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))
