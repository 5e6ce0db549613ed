"""Display items (``ExecutionResult.results``, issue 23): what a cell shows besides its output,
through NsSandbox, SandboxClient and a RemoteSandbox of a real ``nsbox serve`` (the
``session`` fixture), so the items cross each way the same.

``display(obj)`` and the last expression's value give items in order, each with the MIME
types of the object's IPython ``_repr_*_`` methods; a PNG decodes to the size the cell drew;
a method that raises is noted and the cell goes on; a representation past the display
budget is left out and its size said; and what a cell forges in the item list (bad base64,
a GIF as a PNG, text that is not text, too many items) is refused on our side, each refusal
said.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

from nsbox import Status

#: A cell's helper: a valid PNG of width x height (stdlib only: zlib and struct).
MAKE_PNG = """
import struct, zlib
def make_png(width, height):
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    rows = b''.join(b'\\x00' + b'\\x80\\x20\\x20' * width for _ in range(height))
    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    body = chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b'')
    return b'\\x89PNG\\r\\n\\x1a\\n' + body
class Chart:
    def __init__(self, width, height):
        self.size = (width, height)
    def _repr_png_(self):
        return make_png(*self.size)
    def __repr__(self):
        return f'<Chart {self.size[0]}x{self.size[1]}>'
"""


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", png[:16]
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def test_display_calls_then_the_value_give_items_in_order_with_their_mime_types(session: Any) -> None:
    code = """
class Table:
    def _repr_html_(self):
        return '<table><tr><td>1</td></tr></table>'
    def __repr__(self):
        return 'Table(1 row)'
class Note:
    def _repr_markdown_(self):
        return '**bold**'
    def _repr_json_(self):
        return {'n': 1}
display(Table(), Note())
display('just text')
41 + 1
"""
    result = session.execute_code(code)
    assert result.status is Status.OK, result
    table, note, text, value = result.results
    assert table.data == {"text/plain": "Table(1 row)", "text/html": "<table><tr><td>1</td></tr></table>"}
    assert note.markdown == "**bold**" and note.json == {"n": 1}
    assert text.data == {"text/plain": "'just text'"}
    assert value.text == "42" and result.value == "42", "the last value is the last item"
    assert result.html == table.html, "the first HTML the cell showed"
    assert session.execute_code("x = 1").results == (), "a cell that shows nothing has no items"


def test_a_png_decodes_to_the_size_the_cell_drew(session: Any) -> None:
    result = session.execute_code(MAKE_PNG + "display(Chart(64, 48))\nChart(20, 10)")
    assert result.status is Status.OK, result
    shown, value = result.results
    assert png_size(shown.png) == (64, 48) and png_size(value.png) == (20, 10)
    assert result.png == shown.png, "the first PNG"
    assert value.text == "<Chart 20x10>"


def test_a_repr_method_that_raises_leaves_a_text_item_and_the_error(session: Any) -> None:
    code = """
class Broken:
    def _repr_html_(self):
        raise ValueError('no html today')
    def _repr_markdown_(self):
        return 5  # not text
    def __repr__(self):
        return 'Broken()'
Broken()
"""
    result = session.execute_code(code)
    assert result.status is Status.OK and result.error is None, result
    (item,) = result.results
    assert item.data == {"text/plain": "Broken()"}
    assert any("_repr_html_: ValueError: no html today" in e for e in item.errors), item.errors
    assert any("_repr_markdown_: TypeError" in e for e in item.errors), item.errors


def test_a_representation_past_the_display_budget_is_left_out_and_its_size_said(
    make_session: Callable[..., Any],
) -> None:
    session = make_session(output_limit="1M")  # a display budget of 1 MiB
    result = session.execute_code(
        MAKE_PNG + "display(Chart(1, 1))\nclass Huge:\n    def _repr_png_(self):\n"
        "        return make_png(1, 1) + bytes(2 << 20)\nHuge()"
    )
    assert result.status is Status.OK, result
    small, huge = result.results
    assert png_size(small.png) == (1, 1)
    assert huge.png is None and huge.omitted["image/png"] > 2 << 20, huge
    assert huge.text.startswith("<__main__.Huge object"), "its text is kept"


def test_items_a_cell_forges_are_refused_on_our_side_each_said(session: Any) -> None:
    """The cell can send what it likes as an item (``display.emit``, the kernel's own sender):
    nothing in it is trusted, and each refusal is an item in its place, streamed as such."""
    code = """
import base64
send = display.emit
send({'data': {'text/plain': 'ok', 'image/png': 'not base64!'}})
send({'data': {'image/png': base64.b64encode(b'GIF89a' + bytes(10)).decode()}})
send({'data': {'text/html': ['<script>']}})
send({'data': {'text/plain': 'kept', 'application/x-evil': 'dropped silently'}})
send('not an item')
for i in range(200):
    send({'data': {'text/plain': str(i)}})
"""
    streamed: list[Any] = []
    result = session.execute_code(code, on_result=streamed.append)
    assert streamed == list(result.results), "on_result got the checked items, refusals included"
    assert result.status is Status.OK, result
    texts = [item.text for item in result.results]
    assert "kept" in texts and "ok" not in texts
    kept = result.results[texts.index("kept")]
    assert kept.data == {"text/plain": "kept"}, "an unknown MIME type is not passed on"
    said = "\n".join(e for item in result.results for e in item.errors)
    assert "display item 0 dropped: image/png is not valid base64" in said, said
    assert "display item 1 dropped: image/png does not start with PNG's signature" in said, said
    assert "display item 2 dropped: text/html must be text" in said, said
    assert "display item 4 dropped: a display item is a mapping with 'data'" in said, said
    assert "display items past the first 100 dropped" in said, said
    assert len(result.results) == 101, "100 items, then the one that says the rest were dropped"
    assert all(item.png is None and item.html is None for item in result.results)


def test_items_reach_on_result_as_the_cell_shows_them_after_the_output_printed_before(session: Any) -> None:
    """``display()`` sends its item at once (the value and the figures come at the cell's end);
    what the cell printed before an item reaches its callback first."""
    started = time.monotonic()
    seen: list[tuple[float, str, Any]] = []
    code = MAKE_PNG + "print('before', flush=False)\ndisplay(Chart(4, 3))\nimport time\ntime.sleep(1.0)\n"
    code += "display('second')\n'last'"
    result = session.execute_code(
        code,
        on_stdout=lambda text: seen.append((time.monotonic() - started, "stdout", text)),
        on_result=lambda item: seen.append((time.monotonic() - started, "result", item)),
    )
    assert result.status is Status.OK, result
    items = [(at, item) for at, kind, item in seen if kind == "result"]
    assert [item for _, item in items] == list(result.results), "each item once, in order, as the result has them"
    assert png_size(items[0][1].png) == (4, 3) and items[1][1].text == "'second'" and items[2][1].text == "'last'"
    assert items[1][0] - items[0][0] > 0.7, f"the first item came while the cell slept: {seen}"
    assert seen[0][1:] == ("stdout", "before\n"), f"the output printed before the item came first: {seen}"


def test_a_raising_on_result_leaves_the_cell_and_the_session_alone(session: Any) -> None:
    def on_result(item: Any) -> None:
        raise RuntimeError("the caller's bug")

    result = session.execute_code("display(1)\ndisplay(2)\n3", on_result=on_result)
    assert result.status is Status.OK and [item.text for item in result.results] == ["1", "2", "3"], result
    again = session.execute_code("4", on_result=on_result)
    assert again.status is Status.OK and again.value == "4", again


def test_a_timeout_while_items_are_sent_interrupts_the_cell_not_a_frame(session: Any) -> None:
    """SIGINT (the first answer to a timeout) is held back while a frame is written: a cell
    sending items of some 50 packets each when it comes keeps its state, and so does the wire.
    (Without the hold-back, 5 runs in 6 broke a frame: the kernel and its state were lost.)"""
    code = "x = 7\nwhile True:\n    display.emit({'data': {'text/plain': 'y' * 3_000_000}})"
    result = session.execute_code(code, timeout=1.0)
    assert result.status is Status.TIMEOUT and not result.state_lost, result
    assert "KeyboardInterrupt" in (result.traceback or ""), result.traceback
    assert session.execute_code("x").value == "7", "the kernel and its wire are whole"
