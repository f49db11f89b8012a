"""Payloads to bytes and back: dataclasses, msgspec Structs, dicts, pydantic v2 models.

msgspec does the work for everything it knows (dataclasses, attrs classes, Structs, typed
dicts, plain JSON values); pydantic models use pydantic's own JSON methods when pydantic is
installed. Users add a ``Converter`` for anything else.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

from busway.errors import ConversionError
from busway.message import qualified_name

JSON = "application/json"

Decode = Callable[[bytes], Any]


@runtime_checkable
class Converter(Protocol):
    """Turns payloads of the types it supports into bytes and back."""

    content_type: str

    def supports(self, cls: type[Any]) -> bool: ...

    def encode(self, payload: Any) -> bytes: ...

    def decoder(self, cls: type[Any]) -> Decode: ...


def type_name(cls: type[Any]) -> str:
    """The stable name a payload type travels under: ``@named(...)`` or ``module.QualName``."""
    name = cls.__dict__.get("__busway_name__")
    if isinstance(name, str):
        return name
    return qualified_name(cls)


def named(name: str) -> Callable[[type[Any]], type[Any]]:
    """Give a payload class a stable type name that survives moving or renaming it."""

    def mark(cls: type[Any]) -> type[Any]:
        cls.__busway_name__ = name
        return cls

    return mark


class MsgspecConverter:
    """JSON through msgspec: dataclasses, attrs, Structs, TypedDicts, dicts and lists."""

    content_type = JSON

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()
        self._decoders: dict[Any, msgspec.json.Decoder[Any]] = {}

    def supports(self, cls: type[Any]) -> bool:
        try:
            self._decoder_for(cls)
            info = msgspec.inspect.type_info(cls)
        except TypeError:
            return False
        # msgspec accepts any class, as a custom type that needs encode and decode hooks;
        # without hooks such a type cannot travel, wherever it sits in the payload.
        return not _has_custom_type(info)

    def encode(self, payload: Any) -> bytes:
        return self._encoder.encode(payload)

    def decoder(self, cls: type[Any]) -> Decode:
        return self._decoder_for(cls).decode

    def _decoder_for(self, cls: Any) -> msgspec.json.Decoder[Any]:
        decoder = self._decoders.get(cls)
        if decoder is None:
            decoder = self._decoders[cls] = msgspec.json.Decoder(cls)
        return decoder


def _has_custom_type(info: msgspec.inspect.Type) -> bool:
    pending: list[Any] = [info]
    seen: set[int] = set()
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, msgspec.inspect.CustomType):
            return True
        for name in item.__struct_fields__:
            value = getattr(item, name)
            values = value if isinstance(value, tuple) else (value,)
            pending += [
                v for v in values if isinstance(v, msgspec.inspect.Type | msgspec.inspect.Field)
            ]
    return False


class PydanticConverter:
    """JSON through pydantic v2's own serializer, for ``BaseModel`` subclasses."""

    content_type = JSON

    def supports(self, cls: type[Any]) -> bool:
        pydantic = sys.modules.get("pydantic")
        return (
            pydantic is not None and isinstance(cls, type) and issubclass(cls, pydantic.BaseModel)
        )

    def encode(self, payload: Any) -> bytes:
        return payload.model_dump_json().encode()  # type: ignore[no-any-return]

    def decoder(self, cls: type[Any]) -> Decode:
        return cls.model_validate_json  # type: ignore[no-any-return]


class Conversion:
    """The converters in order of preference; the first that supports a type wins."""

    def __init__(self, converters: Sequence[Converter] = ()) -> None:
        self._converters: tuple[Converter, ...] = (
            *converters,
            PydanticConverter(),
            MsgspecConverter(),
        )
        self._by_type: dict[type[Any], Converter] = {}

    def converter_for(self, cls: type[Any]) -> Converter | None:
        converter = self._by_type.get(cls)
        if converter is None:
            for candidate in self._converters:
                if candidate.supports(cls):
                    converter = self._by_type[cls] = candidate
                    break
        return converter

    def supports(self, cls: type[Any]) -> bool:
        return self.converter_for(cls) is not None

    def encode(self, payload: Any) -> tuple[bytes, str]:
        """The payload's bytes and content type."""
        converter = self.converter_for(type(payload))
        if converter is None:
            raise ConversionError(_cannot_convert(type(payload)))
        try:
            return converter.encode(payload), converter.content_type
        except (TypeError, ValueError) as error:
            raise ConversionError(
                f"cannot serialize a {type_name(type(payload))} payload: {error}; "
                "use JSON-friendly field types or register a Converter"
            ) from error

    def decode(self, body: bytes, cls: type[Any]) -> Any:
        converter = self.converter_for(cls)
        if converter is None:
            raise ConversionError(_cannot_convert(cls))
        try:
            return converter.decoder(cls)(body)
        except Exception as error:
            raise ConversionError(f"cannot read the body as a {type_name(cls)}: {error}") from error


def _cannot_convert(cls: type[Any]) -> str:
    return (
        f"busway cannot convert {type_name(cls)} to JSON; make it a dataclass, a msgspec "
        "Struct or a pydantic model, or pass a Converter in Messaging(converters=[...])"
    )
