"""The protocol's frozen records (nsbox._record): what dataclass(frozen=True) gave them."""

from __future__ import annotations

from typing import ClassVar

import pytest

from nsbox._record import record


@record
class Base:
    KIND: ClassVar[str] = "base"
    name: str


@record
class Point(Base):
    x: int
    y: int = 0
    note: str | None = None


def test_fields_come_in_order_with_the_bases_first_and_class_vars_left_out() -> None:
    assert Point.__record_fields__ == ("name", "x", "y", "note")  # type: ignore[attr-defined]
    assert Point("p", 1) == Point(name="p", x=1, y=0, note=None)
    assert Point("p", 1, 2).y == 2 and Point("p", x=1, note="n").note == "n"


def test_records_compare_and_hash_by_value_and_type() -> None:
    assert Point("p", 1) == Point("p", 1) and hash(Point("p", 1)) == hash(Point("p", 1))
    assert Point("p", 1) != Point("p", 2)
    assert Base("p") != Point("p", 0)  # another type, even with the same values
    assert repr(Point("p", 1)) == "Point(name='p', x=1, y=0, note=None)"


def test_a_record_cannot_change_after_it_is_made() -> None:
    point = Point("p", 1)
    with pytest.raises(AttributeError, match="frozen"):
        point.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        del point.x  # type: ignore[misc]
    assert point.x == 1


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {"x": 1}, "missing the argument 'name'"),
        (("p", 1, 2, None, "extra"), {}, "takes 4 arguments"),
        (("p",), {"name": "q", "x": 1}, "repeated argument 'name'"),
        (("p", 1), {"z": 3}, "unexpected or repeated argument 'z'"),
    ],
)
def test_bad_arguments_are_refused(args: tuple[object, ...], kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        Point(*args, **kwargs)  # type: ignore[arg-type]


def test_mutable_defaults_and_required_after_default_are_refused_at_class_creation() -> None:
    with pytest.raises(TypeError, match="immutable"):

        @record
        class Shared:
            items: list[str] = []  # noqa: RUF012  # the point of the test

    with pytest.raises(TypeError, match="follows one with a default"):

        @record
        class Misordered:
            a: int = 0
            b: int
