"""A value that is made after the objects that hold it: given once, then read."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Late(Generic[T]):
    """The runtime, say, for the gateways that handler classes are built with: the runtime
    needs the handlers' router first. Given once, when it is made; read only after that."""

    __slots__ = ("_value",)

    _value: T

    def give(self, value: T) -> None:
        if hasattr(self, "_value"):
            raise RuntimeError("a late value is given once")
        self._value = value

    def get(self) -> T:
        try:
            return self._value
        except AttributeError:
            raise RuntimeError(
                "a late value was read before it was given; read it after start-up"
            ) from None
