"""The payload's syscall filter: the default policy (``_policy``, data with reasons), its
compilation into BPF (``_filter``) and the compiled programs kept (``_cache``). Compiled
early (in the supervisor, before it forks; the spawner warms the cache for the default),
loaded last (the payload's final step before
execve, after no_new_privs, through ``_linux.load_seccomp_filter``)."""

from __future__ import annotations

from ._cache import compile_filters
from ._policy import ALLOWED, CONDITIONAL, NOT_IMPLEMENTED, REFUSED, Group, allowed_names, refused_names

__all__ = [
    "ALLOWED",
    "CONDITIONAL",
    "NOT_IMPLEMENTED",
    "REFUSED",
    "Group",
    "allowed_names",
    "compile_filters",
    "refused_names",
]
