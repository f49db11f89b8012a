"""Option values people write by hand: sizes (``512M``) and durations (``10m``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import click

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

Callback = Callable[[click.Context, click.Parameter, Any], Any]


def parse_size(text: str) -> int:
    """Bytes from ``512M``, ``1G``, ``1.5GiB``, ``2048k`` or plain ``1048576``."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size; write e.g. 512M or 1G")
    return int(float(match[1]) * _SIZE_UNITS[match[2].lower()])


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``30s``, ``10m``, ``1.5h``, ``1d`` or ``500ms``."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; write e.g. 30s, 10m or 2h")
    return float(match[1]) * _DURATION_UNITS[(match[2] or "s").lower()]


def converted(parse: Callable[[str], Any]) -> Callback:
    """A click callback turning the option's text into a value, or a usage error."""

    def callback(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None

    return callback
