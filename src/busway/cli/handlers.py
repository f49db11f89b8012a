"""``busway handlers`` and ``busway inbox cleanup``: what handles what, and its bookkeeping."""

from __future__ import annotations

import click

from busway.cli.app import app_option, opened
from busway.cli.console import table
from busway.cli.values import converted, parse_duration


@click.command()
@app_option
@click.option("--channel", help="Show the retry policy failures on this channel follow.")
def handlers(app: str, channel: str | None) -> None:
    """List handlers with what they take, where they run, and their retry policy."""
    rows = [("HANDLER", "KIND", "TAKES", "CHANNELS", "RETRY POLICY")]
    with opened(app) as messaging:
        for info in messaging.handlers:
            takes = info.key or (info.payload_type.__qualname__ if info.payload_type else "?")
            policy = messaging.retry_policy_for(info, channel)
            rows.append(
                (
                    info.name,
                    info.kind.value,
                    takes,
                    ",".join(info.channels) or "-",
                    policy.describe(),
                )
            )
    table(rows)


@click.group()
def inbox() -> None:
    """The deduplication records kept in the database."""


@inbox.command()
@app_option
@click.option(
    "--older-than",
    default="7d",
    show_default=True,
    callback=converted(parse_duration),
    help="Forget records older than this (e.g. 7d, 12h).",
)
def cleanup(app: str, older_than: float) -> None:
    """Forget old deduplication records.

    A message delivered again after its record is gone takes effect again: keep records longer
    than any redelivery can take.
    """
    with opened(app) as messaging:
        click.echo(f"forgot {messaging.cleanup_inbox(older_than)} deduplication record(s)")
