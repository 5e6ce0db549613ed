"""Option values: parsing ("512M", "0.5", "none") and range checks that name the option.

Every error names the option in both spellings, e.g. ``memory (--memory)``, and says
what is allowed, including which setting raises an operator's cap.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from ._errors import SpecError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: API field -> CLI flag, so that errors name the option the user actually typed.
CLI_FLAGS = {
    "rootfs": "--rootfs",
    "mounts": "--bind/--ro-bind",
    "workspace_size": "--workspace-size",
    "hostname": "--hostname",
    "env": "--env",
    "timeout": "--timeout",
    "output_limit": "--output-limit",
    "memory": "--memory",
    "cpus": "--cpus",
    "pids": "--pids",
    "cpu_time": "--cpu-time",
    "file_size": "--file-size",
    "open_files": "--open-files",
    "cgroups": "--no-cgroups",
    "seccomp": "--seccomp",
    "audit_log": "--audit-log",
    "bind_owner": "--bind-owner",
    "cwd": "--cwd",
    "network": "--net",
    "allowed_hosts": "--allow-host",
    "network.timeout": "--net-timeout",
    "network.rate": "--net-rate",
    "network.max_bytes": "--net-bytes",
    "network.hosts": "--add-host",
    "network.uplink": "--net-uplink",
    "network.resolver": "--net-resolver",
    "command": "COMMAND",
}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}


def option_name(name: str) -> str:
    flag = CLI_FLAGS.get(name)
    return f"{name} ({flag})" if flag else name


def parse_size(value: int | str, option: str) -> int:
    """``512M`` / ``1G`` / ``1.5GiB`` / ``4096`` -> bytes (binary units)."""
    if isinstance(value, bool):
        raise SpecError(option_name(option), f"{value!r} is not a size")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and (m := _SIZE_RE.match(value)):
        number = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    else:
        raise SpecError(
            option_name(option),
            f"{value!r} is not a size; use a number of bytes with an optional K, M, G or T suffix (e.g. 256M)",
        )
    if number < 0:
        raise SpecError(option_name(option), f"{value!r} is negative")
    return number


def parse_number(value: object, option: str) -> float:
    if isinstance(value, bool):
        raise SpecError(option_name(option), f"{value!r} is not a number")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SpecError(option_name(option), f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise SpecError(option_name(option), f"{value!r} is not a finite number")
    return number


def parse_timeout(value: float | int | str | None, option: str = "timeout") -> float | None:
    """Seconds (> 0), or None for no limit."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise SpecError(option_name(option), f"{value!r} is not a number of seconds") from None
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise SpecError(option_name(option), f"{value!r} must be a positive number of seconds")
    return seconds


def bounded(
    option: str,
    value: object,
    low: float,
    high: float,
    kind: Literal["size", "number", "whole"],
    cap: str = "",
) -> float:
    """Parse ``value`` as a size, number or whole number within [low, high]; any error
    names the option and the allowed range (and ``cap``, the setting that raises high)."""
    show = _size if kind == "size" else (lambda v: f"{v:g}")
    allowed = f"allowed: {show(low)} to {show(high)}" + (
        f" (the operator can raise the maximum with {cap})" if cap else ""
    )
    try:
        number = parse_size(value, option) if kind == "size" else parse_number(value, option)  # type: ignore[arg-type]
    except SpecError as exc:
        raise SpecError(exc.options, f"{exc.message}; {allowed}") from None
    if kind == "whole" and number != int(number):
        raise SpecError(option_name(option), f"{value!r} is not a whole number; {allowed}")
    if not low <= number <= high:
        raise SpecError(option_name(option), f"{value!r} is out of range; {allowed}")
    return number


def _size(value: float) -> str:
    for unit, size in (("G", GiB), ("M", MiB), ("K", KiB)):
        if value >= size and value % size == 0:
            return f"{int(value // size)}{unit}"
    return f"{value:g}"
