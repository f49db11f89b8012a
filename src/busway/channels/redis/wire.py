"""A message on the wire: busway's headers as JSON in one field of a stream entry, the body in
another; and entries back as envelopes."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from busway.channels.base import Envelope, Unreadable
from busway.channels.reading import read
from busway.errors import ConversionError
from busway.message import HeaderValue

_encode = msgspec.json.Encoder().encode


def encode_headers(headers: Mapping[str, HeaderValue], stream: str) -> bytes:
    """busway's headers as one JSON object, for an entry's ``headers`` field."""
    try:
        return _encode(headers)
    except TypeError as error:
        raise ConversionError(
            f"a header of a message for stream {stream!r} is not JSON: {error}; "
            "header values must be str, int, float, bool or None"
        ) from error


def fields(headers: bytes, body: bytes) -> tuple[str, bytes, str, bytes]:
    """The field-value pairs of an entry holding a message, as ``XADD`` takes them."""
    return ("headers", headers, "body", body)


def headers_and_body(fields: list[bytes]) -> tuple[bytes, bytes]:
    """An entry's headers and body; one written by another program may have neither field,
    and then its empty headers cannot be read."""
    if len(fields) == 4 and fields[0] == b"headers":
        return fields[1], fields[3]
    named = dict(zip(fields[::2], fields[1::2], strict=False))
    return named.get(b"headers", b""), named.get(b"body", b"")


def read_entry(headers: bytes, body: bytes) -> tuple[Envelope, Unreadable | None]:
    """An entry's envelope; marked ``Unreadable`` when its headers cannot be read."""
    return read(body, headers)
