"""nsbox serve: sandboxes as an HTTP service (the ``serve`` extra: FastAPI on uvicorn).

A layer above the engine: it uses only the engine's public API (``NsSandbox``,
``SandboxPool``, ``Judge``) and adds policy (bearer tokens, quotas, admission, a memory
budget, session expiry), never isolation: every run is the engine's. Modules:

- ``_options``   ServeOptions, the settings, checked (no token file: loopback only)
- ``_auth``      bearer tokens from a file, compared in constant time; requests per minute
- ``_admission`` the bounded queue of one-shot runs and the memory budget (429 beyond them)
- ``_sessions``  sessions owned by a token, with idle and lifetime expiry
- ``_fusion``    SandboxFusion's /run_code request and response, run by judge mode
- ``_models``    the session API's request bodies (unknown fields refused)
- ``_errors``    how a refusal is answered: status, field, body (and a stream's error event)
- ``_stream``    a run's or a cell's output as server-sent events while it runs
- ``_limits``    the request body's cap (413)
- ``_log``       the JSON-lines log of requests and refusals (the audit log)
- ``_metrics``   Prometheus' text format
- ``_app``       the application: its state, auth, errors, access log
- ``_routes``    the routes
- ``_command``   ``nsbox serve``: its options, uvicorn, SIGTERM's drain
- ``_mcp``       ``--mcp``: the MCP tools (``nsbox.mcp``) at ``/mcp``, within the server's bounds

``create_app(ServeOptions(...))`` is the ASGI app, for embedding in another server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._options import ServeOptions

if TYPE_CHECKING:
    from fastapi import FastAPI


def create_app(options: ServeOptions | None = None) -> FastAPI:
    from ._app import create_app as create

    return create(options or ServeOptions())


def main(argv: list[str]) -> int:
    from ._command import main as run

    return run(argv)


__all__ = ["ServeOptions", "create_app", "main"]
