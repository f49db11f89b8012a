"""Messages read defensively: whatever a channel holds becomes a delivery.

Every channel reads its messages' headers here. Headers that cannot be read (not JSON, not
an object, nested too deep, not UTF-8...) do not stop the channel: the delivery is marked
``Unreadable`` and the core moves it to the dead letter store, where its body and its headers
stay as they came (under ``RAW_HEADERS``, or ``RAW_HEADERS_BASE64`` for bytes that are not
text), so that the letter can be replayed once they can be read.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import msgspec

from busway.channels.base import Envelope, Unreadable
from busway.message import HeaderValue

RAW_HEADERS = "busway.raw_headers"
"""The header of a dead letter that holds the unreadable headers of its message, as text."""
RAW_HEADERS_BASE64 = "busway.raw_headers_base64"
"""Like ``RAW_HEADERS``, for raw headers that are not UTF-8 text: base64."""

UNREADABLE_ERRORS = (
    msgspec.DecodeError,  # and msgspec.ValidationError: not JSON, or not an object
    RecursionError,  # nested too deep
    UnicodeError,
    TypeError,
    ValueError,
    OverflowError,
)

NO_HEADERS = "it has no headers"

_decode = msgspec.json.Decoder(dict[str, Any]).decode


def read(body: bytes, raw_headers: bytes | str) -> tuple[Envelope, Unreadable | None]:
    """The envelope of a message whose headers are one JSON object, and None; or, when they
    cannot be read, an envelope that keeps them raw, and why."""
    try:
        return Envelope(body, _decode(raw_headers)), None
    except UNREADABLE_ERRORS as error:
        why = f"its headers are not a JSON object: {_why(error)}" if raw_headers else NO_HEADERS
        return unreadable(body, raw_headers, why)


def unreadable(body: bytes, raw_headers: bytes | str, reason: str) -> tuple[Envelope, Unreadable]:
    """An envelope that keeps ``body`` and ``raw_headers`` as they came, and ``reason``."""
    return Envelope(body, kept_raw(raw_headers)), Unreadable(reason)


def kept_raw(raw_headers: bytes | str) -> dict[str, HeaderValue]:
    """Raw headers as a header of their own: as text when they are UTF-8, else in base64."""
    if not isinstance(raw_headers, bytes | str):  # NULL, or bytes in another wrapper
        raw_headers = b"" if raw_headers is None else bytes(raw_headers)
    if isinstance(raw_headers, str):
        try:
            raw_headers.encode()
        except UnicodeEncodeError:  # lone surrogates: bytes a driver could not decode
            raw_headers = raw_headers.encode("utf-8", "surrogateescape")
        else:
            return {RAW_HEADERS: raw_headers}
    try:
        return {RAW_HEADERS: raw_headers.decode()}
    except UnicodeDecodeError:
        return {RAW_HEADERS_BASE64: base64.b64encode(raw_headers).decode()}


def raw_of(headers: Mapping[str, HeaderValue]) -> bytes | None:
    """The raw headers a dead letter kept of an unreadable message; None for any other."""
    text = headers.get(RAW_HEADERS)
    if isinstance(text, str):
        return text.encode("utf-8", "surrogateescape")
    encoded = headers.get(RAW_HEADERS_BASE64)
    if isinstance(encoded, str):
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return b""
    return None


def readable(raw_headers: bytes | str) -> dict[str, Any] | None:
    """Raw headers read at last, or None while they still cannot be."""
    try:
        return _decode(raw_headers)
    except UNREADABLE_ERRORS:
        return None


def _why(error: BaseException) -> str:
    if isinstance(error, RecursionError):
        return "nested too deep"
    text = str(error).strip() or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."
