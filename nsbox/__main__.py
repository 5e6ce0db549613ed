"""``python -m nsbox`` is the ``nsbox`` command."""

from ._cli import entry

entry()
