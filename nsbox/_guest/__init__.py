"""Code that runs INSIDE a sandbox, with the sandbox's own python3 (stdlib only).

nsbox is not installed there: a guest program goes to ``python3 -c`` as text. ``source``
makes that text: it puts the shared ``wire`` module into ``sys.modules`` under the name it
has in this package, then runs the program as ``__main__``, so each guest imports
``nsbox._guest.wire`` there as it does here (and as the type checker sees it).
"""

from __future__ import annotations

import os

_HERE = os.path.dirname(__file__)


def _text(name: str) -> str:
    with open(os.path.join(_HERE, name), encoding="utf-8") as f:
        return f.read()


def source(program: str) -> str:
    """The ``python3 -c`` text of the guest program ``program`` ("kernel", "warm")."""
    return (
        "import sys, types\n"
        "for name in ('nsbox', 'nsbox._guest', 'nsbox._guest.wire'):\n"
        "    sys.modules[name] = types.ModuleType(name)\n"
        f"exec(compile({_text('wire.py')!r}, 'nsbox-wire', 'exec'), sys.modules['nsbox._guest.wire'].__dict__)\n"
        "del name\n"
        f"exec(compile({_text(program + '.py')!r}, 'nsbox-{program}', 'exec'), {{'__name__': '__main__'}})\n"
    )
