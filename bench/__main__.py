"""``python -m bench [MODULE...]``: run the benchmarks, print a table, write results.json."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import Result, Skip
from busway.errors import MissingExtraError

MODULES = ("core", "sql", "ordering", "amqp", "redis", "nats", "calls", "instruments")
"""Benchmark modules of this package, in the order they run."""

RESULTS = Path(__file__).with_name("results.json")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=f"of {', '.join(MODULES)}")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)
    unknown = set(args.modules) - set(MODULES)
    if unknown:
        parser.error(f"no benchmark module {', '.join(sorted(unknown))}; choose from {MODULES}")

    print(f"Python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs")
    results: list[Result] = []
    for name in args.modules or MODULES:
        found = run_module(name)
        if found is not None:
            results += found
            print_table(found)

    payload = [result.as_dict() for result in results]
    args.output.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", "utf-8")
    print(f"\n{len(results)} result(s) written to {args.output}")
    return 0


def run_module(name: str) -> list[Result] | None:
    """The module's results, or ``None`` after saying why it was skipped."""
    try:
        module = importlib.import_module(f"bench.{name}")
    except ImportError as error:
        if not _optional(error):
            raise
        print(f"\n{name}: skipped, {error}")
        return None
    benchmarks: Callable[[], list[Result]] = module.benchmarks
    print(f"\n{name}: running ...", flush=True)
    try:
        return benchmarks()
    except Skip as reason:
        print(f"{name}: skipped, {reason}")
        return None


def _optional(error: ImportError) -> bool:
    """Whether the import failed for want of an optional driver, not a bug of our own."""
    if isinstance(error, MissingExtraError):
        return True
    missing = error.name or ""
    return bool(missing) and missing.split(".")[0] not in ("bench", "busway")


def print_table(results: list[Result]) -> None:
    rows = [("name", "value", "unit", "baseline", "baseline value", "ratio")]
    for result in results:
        rows.append(
            (
                result.name,
                f"{result.value:.3g}",
                result.unit,
                result.baseline,
                f"{result.baseline_value:.3g}",
                f"{result.ratio:.2f}x",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    numeric = {1, 4, 5}
    for row in rows:
        cells = [
            cell.rjust(width) if column in numeric else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


if __name__ == "__main__":
    sys.exit(main())
