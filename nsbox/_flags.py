"""The sandbox options of the commands that make sandboxes (``nsbox exec``, ``python``,
``judge``, ``mcp``): one set of flags, one way from them to a SandboxSpec; and the parser
every nsbox command uses, whose usage errors exit EXIT_USAGE."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from ._result import EXIT_NSBOX_FAILURE
from ._spec import Limits, Mount, NetworkPolicy, SandboxSpec

#: Bad options: nsbox's own failure, as ``env``, ``timeout``, podman and docker say it (125),
#: never a code a payload's exit could be mistaken for (argparse's 2 is a common exit status).
EXIT_USAGE = EXIT_NSBOX_FAILURE


class Parser(argparse.ArgumentParser):
    """argparse's parser, but a usage error exits EXIT_USAGE (its subcommands' parsers too)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def add_sandbox_options(run: argparse.ArgumentParser) -> dict[str, Any]:
    """The options of every command that makes a sandbox: filesystem, environment, limits,
    security, network. Returns the argument groups by name (a command adds its own to them)."""
    fs = run.add_argument_group("filesystem")
    fs.add_argument(
        "--rootfs",
        metavar="NAME|DIR",
        help="the sandbox's root instead of the host's: a root of `nsbox rootfs list`, or a folder (./DIR); read-only",
    )
    fs.add_argument(
        "--ro-bind", metavar="SRC[:DST]", action="append", default=[], help="make a host path visible, read-only"
    )
    fs.add_argument(
        "--bind", metavar="SRC[:DST]", action="append", default=[], help="make a host path visible, writable"
    )
    fs.add_argument("--workspace-size", metavar="SIZE", default="256M", help="size of /workspace and /tmp (256M)")
    fs.add_argument("--wheels", metavar="DIR", help="a host directory of wheels, bound read-only at /wheels")
    fs.add_argument(
        "--bind-owner",
        metavar="UID:GID",
        help="who owns on the host what the sandbox writes into --bind folders (as root; default: you)",
    )
    env = run.add_argument_group("environment")
    env.add_argument("--hostname", default="nsbox", help="the sandbox's hostname (nsbox)")
    env.add_argument("--env", metavar="KEY=VALUE", action="append", default=[], help="set a variable (repeatable)")
    limits = run.add_argument_group("limits")
    defaults = Limits()
    limits.add_argument("--memory", metavar="SIZE", default="512M", help="memory of the whole sandbox (512M)")
    limits.add_argument("--cpus", metavar="N", default=defaults.cpus, help="CPUs it may use, fractions allowed (1)")
    limits.add_argument("--pids", metavar="N", default=defaults.pids, help="processes it may have at once (64)")
    limits.add_argument("--timeout", metavar="SECONDS", default="60", help="wall-clock limit per run, or 'none' (60)")
    limits.add_argument("--cpu-time", metavar="SECONDS", help="CPU-time limit per run (none)")
    limits.add_argument(
        "--output-limit", metavar="SIZE", default="16M", help="bytes of captured output kept per stream (16M)"
    )
    limits.add_argument("--file-size", metavar="SIZE", default="1G", help="largest file a process may write (1G)")
    limits.add_argument("--open-files", metavar="N", default=defaults.open_files, help="open files per process (1024)")
    limits.add_argument(
        "--no-cgroups",
        action="store_true",
        help="do not use cgroups: memory, cpus and pids become per-process rlimits (weaker; says so in the report)",
    )
    security = run.add_argument_group("security")
    security.add_argument(
        "--seccomp",
        metavar="FILE|unconfined",
        help="change the default syscall allowlist with a policy file (TOML or JSON: allow, refuse, "
        "unknown_errno, refuse_errno), or run with no filter at all ('unconfined': debugging only; "
        "marked in the report)",
    )
    security.add_argument(
        "--audit-log", metavar="PATH", help="append JSON lines of security events (sandbox, runs, refusals) to PATH"
    )
    net = run.add_argument_group("network (default: none, loopback only)")
    net.add_argument(
        "--net",
        metavar="none|allow|routed",
        default="none",
        help="'allow': connections to the --allow-host list only, through nsbox's proxy (HTTP_PROXY inside); "
        "'routed' (root): a real interface, the kernel letting TCP/UDP reach that list only",
    )
    net.add_argument(
        "--allow-host",
        metavar="HOST[:PORT]",
        action="append",
        default=[],
        help="a host name, *.domain, IP or CIDR the sandbox may reach (repeatable)",
    )
    net.add_argument("--net-timeout", metavar="SECONDS", default=30.0, help="connect and idle timeout (30)")
    net.add_argument("--net-rate", metavar="N", default=20.0, help="new connections per second (20)")
    net.add_argument("--net-bytes", metavar="SIZE", help="bytes in and out for the sandbox's life (no limit)")
    net.add_argument(
        "--add-host", metavar="NAME=IP", action="append", default=[], help="resolve NAME to IP (repeatable)"
    )
    net.add_argument("--net-uplink", metavar="NETNS", help="connect out from this network namespace (a path)")
    net.add_argument(
        "--net-resolver", metavar="IP[:PORT]", help="routed: the DNS server allowed names are resolved by (the host's)"
    )
    return {"filesystem": fs, "environment": env, "limits": limits, "security": security, "network": net}


def spec_from_args(args: argparse.Namespace) -> SandboxSpec:
    return SandboxSpec(
        rootfs=args.rootfs,
        mounts=tuple(Mount.parse(m) for m in args.ro_bind) + tuple(Mount.parse(m, writable=True) for m in args.bind),
        workspace_size=args.workspace_size,
        wheels=args.wheels,
        bind_owner=args.bind_owner,
        hostname=args.hostname,
        env=tuple(args.env),
        limits=Limits(
            memory=args.memory,
            cpus=args.cpus,
            pids=args.pids,
            timeout=None if args.timeout.lower() == "none" else args.timeout,
            cpu_time=args.cpu_time,
            output_limit=args.output_limit,
            file_size=args.file_size,
            open_files=args.open_files,
            cgroups=not args.no_cgroups,
        ),
        seccomp=args.seccomp,
        audit_log=args.audit_log,
        network=NetworkPolicy(
            mode=args.net,
            allowed_hosts=tuple(args.allow_host),
            timeout=args.net_timeout,
            rate=args.net_rate,
            max_bytes=args.net_bytes,
            hosts=tuple(args.add_host),
            uplink=args.net_uplink,
            resolver=args.net_resolver,
        ),
    )
