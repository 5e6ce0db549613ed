"""The UTS namespace: the sandbox's own host and domain name."""

from __future__ import annotations

import socket

from . import _linux


def set_names_in_child(hostname: str) -> None:
    socket.sethostname(hostname)
    _linux.setdomainname("(none)")  # not the host's NIS domain
