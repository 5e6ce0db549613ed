"""Frozen records for the protocol's messages, built without ``exec``.

``dataclasses.dataclass(frozen=True)`` writes six methods per class as source text and
compiles each (~1 ms a class here): for the protocol's 26 messages that was ~25 ms of
every ``nsbox exec``'s imports, before any sandbox existed. ``record`` gives a class the
same behaviour (keyword or positional construction with defaults, no assignment after it,
equality and hashing by value, a readable repr) with shared functions that look the fields
up in a tuple; type checkers treat it as a frozen dataclass (``dataclass_transform``).

Fields are the class's annotations, the bases' first, except ``ClassVar`` ones; a field's
default is the class attribute of that name, which must be immutable (None, a number, a
bool, a string): the records are values on a wire.
"""

from __future__ import annotations

from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")
_IMMUTABLE = (type(None), bool, int, float, str, bytes)


@dataclass_transform(frozen_default=True)
def record(cls: type[T]) -> type[T]:
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        # The class's own annotations only (inspect.get_annotations would cost an import).
        for name, hint in klass.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
            if name not in names and not str(hint).startswith(("ClassVar", "typing.ClassVar")):
                names.append(name)
    defaults = {name: cls.__dict__[name] for name in names if name in cls.__dict__}
    for name, value in defaults.items():
        if not isinstance(value, _IMMUTABLE):
            raise TypeError(f"{cls.__name__}.{name}: a record's default must be immutable")
    required = [name for name in names if name not in defaults]
    if any(names.index(name) > names.index(later) for name in required for later in defaults):
        raise TypeError(f"{cls.__name__}: a field without a default follows one with a default")
    cls.__record_fields__ = tuple(names)  # type: ignore[attr-defined]
    cls.__record_defaults__ = defaults  # type: ignore[attr-defined]
    for name, method in _METHODS.items():
        setattr(cls, name, method)
    return cls


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    names: tuple[str, ...] = cls.__record_fields__
    if len(args) > len(names):
        raise TypeError(f"{cls.__name__}() takes {len(names)} arguments, {len(args)} were given")
    values = dict(zip(names, args, strict=False))
    for name, value in kwargs.items():
        if name not in names or name in values:
            raise TypeError(f"{cls.__name__}() got an unexpected or repeated argument {name!r}")
        values[name] = value
    defaults: dict[str, Any] = cls.__record_defaults__
    for name in names:
        if name in values:
            object.__setattr__(self, name, values[name])
        elif name in defaults:
            object.__setattr__(self, name, defaults[name])
        else:
            raise TypeError(f"{cls.__name__}() is missing the argument {name!r}")


def _setattr(self: Any, name: str, value: Any) -> None:
    raise AttributeError(f"cannot assign to field {name!r} of a {type(self).__name__} (a frozen record)")


def _delattr(self: Any, name: str) -> None:
    raise AttributeError(f"cannot delete field {name!r} of a {type(self).__name__} (a frozen record)")


def _values(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, name) for name in type(self).__record_fields__)


def _eq(self: Any, other: object) -> bool:
    return type(other) is type(self) and _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash((type(self), _values(self)))


def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in type(self).__record_fields__)
    return f"{type(self).__qualname__}({shown})"


_METHODS = {
    "__init__": _init,
    "__setattr__": _setattr,
    "__delattr__": _delattr,
    "__eq__": _eq,
    "__hash__": _hash,
    "__repr__": _repr,
}
