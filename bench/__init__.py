"""busway's benchmarks, run by ``make bench`` (``python -m bench``).

Every figure is compared with a hand-written baseline doing the same work in the same run:
these machines are noisy, so only ratios within one run compare.

To add benchmarks, write a module in this package with ``def benchmarks() -> list[Result]``
and name it in ``MODULES`` in ``bench/__main__.py``. A module whose driver is not installed
fails to import and is skipped; one whose service is not reachable raises ``Skip(reason)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Result:
    """One figure and the baseline it is compared with; ``ratio`` is value / baseline_value."""

    name: str
    value: float
    unit: str
    baseline: str
    baseline_value: float

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value if self.baseline_value else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_value": self.baseline_value,
            "ratio": self.ratio,
        }


class Skip(Exception):
    """Raised by ``benchmarks()`` when what it needs (a server, a driver) is not here."""
