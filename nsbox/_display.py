"""Display items: what a cell shows besides its output (``ExecutionResult.results``).

Each item is one object a cell displayed (``display(obj)`` inside, then the last
expression's value), as the MIME types its IPython ``_repr_*_`` methods gave: ``text/plain``
always, and ``text/html``, ``text/markdown``, ``text/latex``, ``image/svg+xml``,
``image/png`` (base64 on the wire, bytes here), ``application/json`` when it has them.

Everything comes from inside the sandbox and stays untrusted: only these MIME types are
kept, each of the right type, a PNG only if its base64 decodes and it starts with PNG's
signature; at most MAX_ITEMS items, and the cell's display budget in bytes (``DisplayIntake``,
as the kernel sends them one by one); nothing is rendered or sanitised here (an ``html``
shown in a browser is the sandbox's HTML: show it in a sandboxed iframe, or not at all).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

#: The MIME types an item may carry (as REPR_METHODS in _guest/kernel.py).
MIME_TYPES = (
    "text/plain",
    "text/html",
    "text/markdown",
    "text/latex",
    "image/svg+xml",
    "image/png",
    "application/json",
)
MAX_ITEMS = 100
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Notes an item keeps at most (its reprs' errors), and their length (as _guest/kernel.py's).
MAX_NOTES, MAX_NOTE = 3, 300


@dataclass(frozen=True)
class DisplayItem:
    """One displayed object: ``data`` maps MIME type to its representation (``image/png``
    as bytes); ``errors``: the ``_repr_*_`` methods that raised (the item keeps the rest);
    ``omitted``: representations left out for the cell's display budget, with their size."""

    data: dict[str, Any]
    errors: tuple[str, ...] = ()
    omitted: dict[str, int] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return str(self.data.get("text/plain", ""))

    @property
    def html(self) -> str | None:
        return self.data.get("text/html")

    @property
    def markdown(self) -> str | None:
        return self.data.get("text/markdown")

    @property
    def latex(self) -> str | None:
        return self.data.get("text/latex")

    @property
    def svg(self) -> str | None:
        return self.data.get("image/svg+xml")

    @property
    def png(self) -> bytes | None:
        return self.data.get("image/png")

    @property
    def json(self) -> Any:
        return self.data.get("application/json")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: a PNG as base64 (as it crossed the wire)."""
        data = dict(self.data)
        if "image/png" in data:
            data["image/png"] = base64.b64encode(data["image/png"]).decode("ascii")
        return {"data": data, "errors": list(self.errors), "omitted": dict(self.omitted)}

    @classmethod
    def from_dict(cls, raw: Any) -> DisplayItem:
        """An item from the wire (the kernel's, or a server's): checked, never trusted.
        ValueError if it is not one."""
        if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
            raise ValueError("a display item is a mapping with 'data'")
        data: dict[str, Any] = {}
        for mime, value in raw["data"].items():
            if mime not in MIME_TYPES:
                continue  # a type we do not pass on
            if mime == "image/png":
                data[mime] = _png(value)
            elif mime == "application/json":
                json.dumps(value, allow_nan=False)  # a JSON value (the frame was JSON already)
                data[mime] = value
            elif isinstance(value, str):
                data[mime] = value
            else:
                raise ValueError(f"{mime} must be text")
        errors = raw.get("errors") or []
        omitted = raw.get("omitted") or {}
        if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
            raise ValueError("a display item's errors are text")
        if not isinstance(omitted, dict) or not all(
            k in MIME_TYPES and isinstance(v, int) and not isinstance(v, bool) for k, v in omitted.items()
        ):
            raise ValueError("a display item's omitted maps a MIME type to a size")
        return cls(data, tuple(e[:MAX_NOTE] for e in errors[:MAX_NOTES]), dict(omitted))


def _png(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("image/png must be base64 text")
    try:
        png = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("image/png is not valid base64") from None
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("image/png does not start with PNG's signature")
    return png


class DisplayIntake:
    """A cell's display items as the kernel sends them, one frame each: checked, counted,
    and bounded in bytes (``limit``, as the frames' JSON). A frame refused is an item saying
    why, in its place; past MAX_ITEMS frames, one item says the rest were dropped."""

    def __init__(self, limit: int) -> None:
        self.items: list[DisplayItem] = []
        self.frames = 0
        self.left = limit

    def take(self, raw: Any) -> DisplayItem | None:
        """The item a frame gives (the one added to ``items``), or None for nothing."""
        index, self.frames = self.frames, self.frames + 1
        if index > MAX_ITEMS:
            return None
        if index == MAX_ITEMS:
            return self._add(_refusal(f"display items past the first {MAX_ITEMS} dropped"))
        size = len(json.dumps(raw))
        if size > self.left:
            self.left = 0
            return self._add(_refusal(f"display item {index} dropped: past the cell's display budget"))
        self.left -= size
        try:
            return self._add(DisplayItem.from_dict(raw))
        except ValueError as exc:
            return self._add(_refusal(f"display item {index} dropped: {exc}"))

    def _add(self, item: DisplayItem) -> DisplayItem:
        self.items.append(item)
        return item


def _refusal(why: str) -> DisplayItem:
    return DisplayItem({"text/plain": f"<{why}>"}, (why,))
