"""Code that runs INSIDE a sandbox, with the sandbox's own python3 (stdlib only)."""
