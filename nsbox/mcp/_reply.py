"""What a tool answers: text for the model, with the verdict first, then stdout, stderr,
the value and the error, then the PNGs the cell displayed as image content; ``isError``
when the code did not succeed (an exception, a non-zero exit, a limit) or the call was
refused.

Everything here comes from the sandbox and stays untrusted: it is text handed to the
client, never interpreted. Each stream is cut at ``REPLY_LIMIT`` characters (an agent's
context is not the place for megabytes: the cut says how much more there was, and the
whole output can go to a file in the workspace and be read in parts).
"""

from __future__ import annotations

import base64

from mcp.types import CallToolResult, ImageContent, TextContent

from nsbox import ExecutionResult, RunResult, Status

from ._options import McpOptions

#: Characters of one stream (stdout, stderr, a file) in a reply, at most.
REPLY_LIMIT = 64 * 1024
#: PNGs a cell displayed that a reply carries (as image content), at most.
MAX_IMAGES = 8


def text(body: str, *, error: bool = False) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=body)], is_error=error)


def cut(value: str, limit: int = REPLY_LIMIT) -> str:
    if len(value) <= limit:
        return value
    return value[:limit] + f"\n[... {len(value) - limit} more characters cut: the reply holds {limit} at most]"


def verdict(result: RunResult | ExecutionResult, options: McpOptions, timeout: float | None = None) -> str:
    """One line: how the call ended, naming the limit (and the option that sets it) when one
    ended it; ``timeout``: the call's own, when it asked for less than the server's."""
    status = result.status
    flags = options.flags
    if status is Status.OK:
        return f"ok ({result.wall_s:.2f} s)"
    if status is Status.TIMEOUT:
        if timeout is not None and timeout < options.timeout:
            return f"timeout: {result.error} (this call's timeout; this server's limit is {options.timeout:g} s)"
        return f"timeout: {result.error}; this server's limit is {options.timeout:g} s ({flags['timeout']})"
    if status is Status.OOM:
        memory = options.spec.limits.memory
        return f"out of memory: killed at the sandbox's memory limit, {memory >> 20} MiB ({flags['memory']})"
    if status is Status.PIDS:
        return f"process limit: a fork failed at the sandbox's limit of {options.spec.limits.pids} processes"
    if status is Status.CPU_TIME:
        return f"cpu time: {result.error}"
    if status is Status.OUTPUT_LIMIT:
        return f"output limit: {result.error}"
    if status is Status.EXCEPTION:
        return f"exception: {getattr(result, 'error', '') or 'the code raised'}"
    if status is Status.EXIT:
        return f"exit code {result.exit_code}" if isinstance(result, RunResult) else "exited"
    return f"{status.value}: {result.error or 'failed'}"


def _decoded(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def of_run(
    result: RunResult, options: McpOptions, note: str | None = None, timeout: float | None = None
) -> CallToolResult:
    parts = [verdict(result, options, timeout)]
    if note:
        parts.append(f"note: {note}")
    _streams(parts, (result.stdout, result.stdout_truncated), (result.stderr, result.stderr_truncated))
    return text("\n".join(parts), error=not result.ok)


Stream = tuple[bytes | str | None, bool]  #: its output, and whether the sandbox's limit cut it


def _streams(parts: list[str], stdout: Stream, stderr: Stream) -> None:
    for name, (value, truncated) in (("stdout", stdout), ("stderr", stderr)):
        shown = _decoded(value)
        if shown or truncated:
            limit = "\n[the sandbox's output limit cut it]" if truncated else ""
            parts.append(f"--- {name} ---\n{cut(shown)}{limit}")


def of_cell(
    result: ExecutionResult, options: McpOptions, note: str | None = None, timeout: float | None = None
) -> CallToolResult:
    parts = [verdict(result, options, timeout)]
    if note:
        parts.append(f"note: {note}")
    if result.state_lost:
        parts.append("note: the session's Python state was lost: earlier variables and imports are gone")
    _streams(parts, (result.stdout, result.stdout_truncated), (result.stderr, result.stderr_truncated))
    if result.value is not None:
        parts.append(f"--- value ---\n{cut(result.value)}")
    if result.traceback or (result.error and result.status is Status.EXCEPTION):
        parts.append(f"--- error ---\n{cut(result.traceback or result.error or '')}")
    images = [item.png for item in result.results if item.png is not None][:MAX_IMAGES]
    if images:
        parts.append(f"--- {len(images)} image(s) follow (image/png) ---")
    reply = text("\n".join(parts), error=not result.success)
    # Checked on the host (valid base64 of a PNG signature); the client shows them or not.
    reply.content += [
        ImageContent(type="image", data=base64.b64encode(png).decode("ascii"), mime_type="image/png") for png in images
    ]
    return reply
