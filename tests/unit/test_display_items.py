"""DisplayItem: what crosses from a kernel (or a server) is checked, and round-trips."""

from __future__ import annotations

import base64

import pytest

from nsbox import DisplayItem, ExecutionResult, Status
from nsbox._display import MAX_ITEMS, DisplayIntake

PNG = b"\x89PNG\r\n\x1a\n" + bytes(20)


def test_an_item_round_trips_with_its_png_as_bytes_here_and_base64_on_the_wire() -> None:
    wire = {"data": {"text/plain": "x", "image/png": base64.b64encode(PNG).decode()}, "errors": [], "omitted": {}}
    item = DisplayItem.from_dict(wire)
    assert item.png == PNG and item.text == "x"
    assert item.to_dict() == wire
    result = ExecutionResult(Status.OK, results=(item,))
    back = ExecutionResult.from_dict(result.to_dict())
    assert back.results == (item,) and back.png == PNG


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ({"data": {"image/png": "%%%"}}, "not valid base64"),
        ({"data": {"image/png": base64.b64encode(b"GIF89a").decode()}}, "PNG's signature"),
        ({"data": {"image/png": 7}}, "base64 text"),
        ({"data": {"text/html": b"x"}}, "must be text"),
        ({"data": {}, "errors": "one"}, "errors are text"),
        ({"data": {}, "omitted": {"text/html": True}}, "omitted maps"),
        ({"data": {}, "omitted": {"x/y": 1}}, "omitted maps"),
        (["data"], "a mapping with 'data'"),
    ],
)
def test_a_bad_item_is_refused_with_why(raw: object, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        DisplayItem.from_dict(raw)


def test_the_intake_drops_unknown_mime_types_says_each_refusal_in_place_and_bounds_count_and_bytes() -> None:
    intake = DisplayIntake(limit=10_000)
    taken = [intake.take({"data": {"text/plain": "a", "text/x-evil": "b"}}) for _ in range(MAX_ITEMS + 3)]
    assert len(intake.items) == MAX_ITEMS + 1 and taken[-2:] == [None, None], "frames past the first 101 are nothing"
    assert intake.items[0].data == {"text/plain": "a"}
    assert intake.items[-1].errors == (f"display items past the first {MAX_ITEMS} dropped",)
    assert taken[: MAX_ITEMS + 1] == intake.items, "what take gives is what the result keeps, in order"

    intake = DisplayIntake(limit=300)
    first = intake.take({"data": {"text/plain": "x" * 100}})
    refused = intake.take("nope")
    big = intake.take({"data": {"text/plain": "y" * 300}})
    after = intake.take({"data": {"text/plain": "z"}})
    assert first is not None and first.text == "x" * 100
    assert refused is not None and refused.errors == (
        "display item 1 dropped: a display item is a mapping with 'data'",
    )
    assert big is not None and big.errors == ("display item 2 dropped: past the cell's display budget",)
    assert after is not None and after.errors == ("display item 3 dropped: past the cell's display budget",), (
        "once the budget is spent, it stays spent"
    )


def test_the_kernels_bounds_and_mime_types_are_the_hosts() -> None:
    from nsbox._display import MAX_NOTE, MAX_NOTES, MIME_TYPES
    from nsbox._guest import kernel

    assert (kernel.MAX_ITEMS, kernel.MAX_NOTES, kernel.MAX_NOTE) == (MAX_ITEMS, MAX_NOTES, MAX_NOTE)
    assert {"text/plain", *dict(kernel.REPR_METHODS)} == set(MIME_TYPES)
