"""The command line: a thin client of NsSandbox. Nothing past this module sees argparse.

Exit codes: the payload's own (128+N for signal N, 124 timeout, 126/127 could not
execute / not found); 125 when nsbox itself failed, bad options included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess  # nosec B404  # only its DEVNULL constant
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__
from ._errors import NsboxError, RunFailed, SecurityError, SpecError
from ._files import FILE_LIMIT
from ._flags import EXIT_USAGE, Parser, add_sandbox_options, spec_from_args
from ._hostfiles import read_host_file, write_host_file
from ._result import EXIT_NSBOX_FAILURE, RunResult
from ._spec import PACKAGES, WORKSPACE


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="nsbox",
        description="Run untrusted code in a Linux-namespace sandbox.",
    )
    parser.add_argument("--version", action="version", version=f"nsbox {__version__}")
    commands = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "exec",
        help="run a command in a fresh sandbox",
        description="Run COMMAND in a fresh sandbox and exit with its exit code.",
        usage="nsbox exec [options] -- COMMAND [ARG...]",
    )
    _sandbox_options(run)
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND", help="the program and its arguments")

    python = commands.add_parser(
        "python",
        help="run Python code in a fresh sandbox",
        description="Run Python code (-c CODE, or a FILE.py copied into /workspace) with the sandbox's python3 "
        "in a fresh sandbox, and exit with its exit code.",
        usage="nsbox python [options] (-c CODE | FILE.py) [ARG...]",
    )
    python.add_argument("-c", dest="code", metavar="CODE", help="the program, as a string")
    _sandbox_options(python)
    python.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="FILE.py [ARG...]", help="the script and its arguments"
    )

    judge = commands.add_parser(
        "judge",
        help="run many programs or judge many submissions, each program in a fresh process",
        description="Read programs or submissions as JSON lines from FILE.jsonl ('-': stdin) and write a result "
        'for each, in order, as JSON lines. A line is {"code": ..., "language": python|bash|c|cpp, '
        '"timeout": S, "stdin": ...} (run_code), or with "tests": [{"input": ..., "output": ...}] '
        'and optionally "compare", "tolerance", "stop_on_failure" (judge). The limits are each sandbox\'s.',
        usage="nsbox judge [options] FILE.jsonl",
    )
    judge.add_argument("--workers", metavar="N", type=int, default=2, help="sandboxes working at once (2)")
    _sandbox_options(judge, install=False)
    judge.add_argument("file", metavar="FILE.jsonl", help="one JSON object per line")

    # Their options are their own (nsbox/serve/_command.py, nsbox/mcp/_command.py): main() hands
    # their arguments over unparsed.
    commands.add_parser("serve", help="serve sandboxes over HTTP (the serve extra: pip install 'nsbox[serve]')")
    commands.add_parser("mcp", help="serve sandboxes to an AI agent over MCP's stdio (the mcp extra: nsbox[mcp])")
    check = commands.add_parser("check", help="show what this host supports, with a remedy for each gap")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    _rootfs_commands(commands)
    return parser


def _rootfs_commands(commands: Any) -> None:
    rootfs = commands.add_parser(
        "rootfs",
        help="build, import, list and remove root filesystems for --rootfs NAME",
        description="Root filesystems in nsbox's data directory ($NSBOX_DATA_DIR, else /var/lib/nsbox for root, "
        "~/.local/share/nsbox otherwise), for --rootfs NAME.",
    )
    actions = rootfs.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="build a Debian root from a recipe (debootstrap; as root)",
        description="Build a root from RECIPE (a name in rootfs/, e.g. minimal or python, or a .toml file) with "
        "debootstrap and apt. An unchanged recipe is a no-op.",
    )
    build.add_argument("recipe", metavar="RECIPE")
    build.add_argument("--name", help="the root's name (default: the recipe's)")
    build.add_argument("--force", action="store_true", help="rebuild even when the recipe is unchanged")
    image = actions.add_parser(
        "import",
        help="unpack a local OCI or `docker save` archive into a root",
        description="Unpack IMAGE.tar (an OCI image layout archive or `docker save` output) into the root NAME, "
        "verifying every digest. The same image again is a no-op.",
    )
    image.add_argument("image", metavar="IMAGE.tar")
    image.add_argument("name", metavar="NAME")
    image.add_argument("--force", action="store_true", help="unpack again even when the image is unchanged")
    listing = actions.add_parser("list", help="the roots there are")
    listing.add_argument("--json", action="store_true", help="their manifests, as JSON")
    remove = actions.add_parser("remove", help="remove a root")
    remove.add_argument("name", metavar="NAME")


def _sandbox_options(run: argparse.ArgumentParser, install: bool = True) -> None:
    groups = add_sandbox_options(run)
    groups["environment"].add_argument("--cwd", default=WORKSPACE, help=f"working directory inside ({WORKSPACE})")
    if install:
        groups["filesystem"].add_argument(
            "--install",
            metavar="NAME",
            action="append",
            default=[],
            help="pip-install a package from --wheels first (repeatable; on the run's PYTHONPATH)",
        )
    groups["limits"].add_argument("--report", metavar="PATH", help="write the result as JSON to PATH ('-' = stderr)")


def entry() -> NoReturn:
    """The ``nsbox`` command: main(), then exit without the interpreter's teardown (its
    module and garbage collection at exit cost ~10-20 ms, more than some sandboxes). Every
    sandbox is closed and every file written by then; only stdio is still buffered."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    if given[:1] == ["serve"]:
        from .serve import main as serve

        return serve(given[1:])
    if given[:1] == ["mcp"]:
        from .mcp import main as mcp

        return mcp(given[1:])
    args = _parser().parse_args(given)
    if args.subcommand == "check":
        return _check(args.json)
    if args.subcommand == "rootfs":
        return _rootfs(args)
    if args.subcommand == "judge":
        return _judge(args)
    return _exec(args)


def _exec(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    try:
        spec = spec_from_args(args)
        script = None
        if args.subcommand == "python":
            command, script = _python_command(args.code, command)
        if not command:
            raise SpecError("COMMAND", "no command given; usage: nsbox exec [options] -- COMMAND [ARG...]")
        if spec.seccomp.unconfined:
            print("nsbox: warning: --seccomp unconfined: the payload runs with NO syscall filter", file=sys.stderr)
        from ._module_hint import StderrTail, is_python, missing_module_hint
        from ._sandbox import NsSandbox

        stdio = [fd if _is_open(fd) else subprocess.DEVNULL for fd in (0, 1, 2)]
        tail = StderrTail(stdio[2]) if is_python(command) and stdio[2] == 2 else None
        try:
            with NsSandbox._in_process(spec) as sandbox:
                env = _install(sandbox, args.install, spec)
                if script is not None:
                    sandbox.write_file(command[1], script)
                stderr = stdio[2] if tail is None else tail.fd
                result = sandbox.run(command, cwd=args.cwd, env=env, stdin=stdio[0], stdout=stdio[1], stderr=stderr)
        finally:
            hint = None if tail is None else missing_module_hint(tail.end())
        if hint and not result.ok:
            print(f"nsbox: {hint}", file=sys.stderr)
    except SpecError as exc:
        print(f"nsbox: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RunFailed as exc:  # --install: pip failed
        print(f"nsbox: --install failed: {exc}", file=sys.stderr)
        sys.stderr.write((exc.stderr or b"").decode("utf-8", "replace"))
        return EXIT_NSBOX_FAILURE
    except NsboxError as exc:  # SetupError, SandboxError: nsbox itself failed
        print(f"nsbox: {exc}", file=sys.stderr)
        _report(args.report, {"status": "error", "exit_code": EXIT_NSBOX_FAILURE, "error": str(exc)})
        return EXIT_NSBOX_FAILURE
    if result.error and result.status.value == "error":
        print(f"nsbox: {result.error}", file=sys.stderr)
    if not _report(args.report, _report_data(result)):
        return EXIT_NSBOX_FAILURE
    return result.exit_code


def _install(sandbox: Any, packages: list[str], spec: Any) -> dict[str, str] | None:
    """``--install``: the packages pip-installed from ``--wheels``, and the run's environment
    that finds them (PYTHONPATH, before the one ``--env`` gave); None when there are none."""
    if not packages:
        return None
    sandbox.install_packages(packages)
    given = dict(spec.env).get("PYTHONPATH")
    return {"PYTHONPATH": PACKAGES if not given else f"{PACKAGES}:{given}"}


def _judge(args: argparse.Namespace) -> int:
    try:
        items = _json_lines(args.file)
        with_tests = {"tests" in item for item in items}
        if len(with_tests) > 1:
            raise SpecError("FILE.jsonl", "every line has tests (submissions to judge) or none does (programs)")
        spec = spec_from_args(args)
        from ._judge import Judge

        shown = _progress(len(items))
        with Judge(args.workers, spec=spec) as judge:
            if with_tests == {True}:
                lines = [r.to_dict() for r in judge.judge_many(items, progress=shown)]
            else:
                lines = [r.to_dict() for r in judge.run_code_many(items, progress=shown)]
    except SpecError as exc:
        print(f"nsbox: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NsboxError as exc:
        print(f"nsbox: {exc}", file=sys.stderr)
        return EXIT_NSBOX_FAILURE
    for line in lines:
        print(json.dumps(line))
    return 0


def _json_lines(path: str) -> list[dict[str, Any]]:
    try:
        text = (
            sys.stdin.buffer.read()
            if path == "-"
            else read_host_file(path, 1 << 30, what="FILE.jsonl", follow_symlinks=True)
        )
    except (OSError, SecurityError) as exc:
        raise SpecError("FILE.jsonl", f"cannot read {path!r}: {exc}") from None
    items = []
    for number, line in enumerate(text.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise SpecError("FILE.jsonl", f"line {number} is not JSON: {exc}") from None
        if not isinstance(item, dict) or not isinstance(item.get("code"), str):
            raise SpecError("FILE.jsonl", f"line {number} is not an object with a string 'code'")
        items.append(item)
    return items


def _progress(total: int) -> Any:
    """A progress line on stderr, when it is a terminal."""

    def show(done: int) -> None:
        if sys.stderr.isatty():
            end = "\n" if done == total else ""
            print(f"\r{done}/{total} [{'#' * (30 * done // total):<30}]", end=end, file=sys.stderr, flush=True)

    return show


def _python_command(code: str | None, args: list[str]) -> tuple[list[str], bytes | None]:
    """python3's argv and, for a FILE.py, its content (copied into the workspace)."""
    if code is not None:
        return ["python3", "-c", code, *args], None
    if not args:
        raise SpecError(
            "FILE.py", "give -c CODE or a script; usage: nsbox python [options] (-c CODE | FILE.py) [ARG...]"
        )
    try:  # the caller's own file, named on the command line: a symlink to it is fine, a FIFO is not
        script = read_host_file(args[0], FILE_LIMIT, what="FILE.py", follow_symlinks=True)
    except SecurityError as exc:
        raise SpecError("FILE.py", str(exc)) from None
    except OSError as exc:
        raise SpecError("FILE.py", f"cannot read {args[0]!r}: {exc.strerror}") from None
    return ["python3", os.path.basename(args[0]), *args[1:]], script


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _report_data(result: RunResult) -> dict[str, Any]:
    data = result.to_dict()
    data["nsbox_version"] = __version__
    return data


def _report(path: str | None, data: dict[str, Any]) -> bool:
    """Write the report; False (said on stderr) if it could not be written."""
    if not path:
        return True
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if path == "-":
        sys.stderr.write(text)
        return True
    # Written after the payload ran, maybe into a folder it could write (a bind): a new file
    # renamed into place, never written through a symlink or FIFO planted at the name.
    try:
        write_host_file(path, text.encode(), what="--report")
    except (NsboxError, OSError) as exc:
        print(f"nsbox: error: --report: {exc}", file=sys.stderr)
        return False
    return True


def _rootfs(args: argparse.Namespace) -> int:
    from . import _rootfs

    def say(line: str) -> None:
        print(f"nsbox: {line}", file=sys.stderr, flush=True)

    try:
        if args.action == "build":
            _rootfs.build_rootfs(args.recipe, name=args.name, force=args.force, progress=say)
        elif args.action == "import":
            _rootfs.import_rootfs(args.image, args.name, force=args.force, progress=say)
        elif args.action == "remove":
            _rootfs.remove_rootfs(args.name)
        else:
            _print_roots(_rootfs.list_rootfs(), args.json)
    except SpecError as exc:
        print(f"nsbox: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NsboxError as exc:
        print(f"nsbox: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nsbox: interrupted; nothing of it was kept", file=sys.stderr)
        return 130
    return 0


def _print_roots(roots: Sequence[Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.to_dict() for r in roots], indent=2))
        return
    if not roots:
        print("no roots yet: `nsbox rootfs build minimal` or `nsbox rootfs import IMAGE.tar NAME`")
    for r in roots:
        m = r.manifest
        source = m.get("recipe", {}).get("source") or m.get("image", {}).get("source", "?")
        python = m.get("packages", {}).get("python3", "-")
        size = f"{m.get('size_bytes', 0) / 1e6:.0f} MB"
        print(f"{r.name:16} {m.get('kind', '?'):6} {size:>8}  python3 {python:14} {m.get('created', '?')}  {source}")
        print(f"{'':16} {r.path}")


def _check(as_json: bool) -> int:
    from ._host import probe

    checks = probe()
    ready = all(c.ok for c in checks if c.required)
    if as_json:
        print(json.dumps({"ready": ready, "checks": [c.to_dict() for c in checks]}, indent=2))
        return 0 if ready else 1
    width = max(len(c.name) for c in checks)
    print("nsbox check: what this host supports")
    for c in checks:
        mark = "ok" if c.ok else ("FAIL" if c.required else "warn")
        print(f"  {mark:4}  {c.name:{width}}  {c.detail}")
        if c.remedy:
            print(f"        {'':{width}}  -> {c.remedy}")
    print("ready: nsbox can run sandboxes here" if ready else "NOT ready: fix the FAIL lines above")
    return 0 if ready else 1
