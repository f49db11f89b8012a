"""A message on the wire: busway's headers in one NATS header, as a JSON object, so typed
values survive; the body as the body."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping

import msgspec

from busway.channels.base import Envelope, Unreadable
from busway.channels.reading import UNREADABLE_ERRORS, read
from busway.errors import ConversionError
from busway.message import HeaderValue

HEADERS = "busway-headers"
"""The NATS header carrying busway's headers, as one JSON object (typed values survive)."""


def encode_headers(headers: Mapping[str, HeaderValue], channel: str = "?") -> str:
    """busway's headers as one JSON object in ASCII (NATS header values are one text line)."""
    try:
        encoded = msgspec.json.encode(headers)
    except TypeError as error:
        raise ConversionError(
            f"a header of a message for channel {channel!r} is not JSON: {error}; "
            "header values must be str, int, float, bool or None"
        ) from error
    if encoded.isascii():
        return encoded.decode()
    return json.dumps(dict(headers), ensure_ascii=True, separators=(",", ":"))


def decode_headers(headers: Mapping[str, str] | None) -> dict[str, HeaderValue]:
    """busway's headers back from a message; a foreign message keeps its plain headers."""
    if not headers:
        return {}
    encoded = headers.get(HEADERS)
    if encoded is not None:
        with contextlib.suppress(*UNREADABLE_ERRORS):
            decoded = msgspec.json.decode(encoded)
            if isinstance(decoded, dict):
                return decoded
    return dict(headers)


def read_message(
    data: bytes, headers: Mapping[str, str] | None
) -> tuple[Envelope, Unreadable | None]:
    """A message's envelope; marked ``Unreadable`` when its busway headers cannot be read.

    A message without them (another program's) keeps its plain NATS headers: the core
    finds no handler for it and tells why."""
    encoded = headers.get(HEADERS) if headers else None
    if encoded is None:
        return Envelope(data, dict(headers) if headers else {}), None
    return read(data, encoded)
