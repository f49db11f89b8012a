"""``busway setup`` and ``busway channels``: creating and inspecting the channels."""

from __future__ import annotations

import click

from busway.cli.app import app_option, opened
from busway.cli.console import age_text, table
from busway.messaging import Messaging


@click.command()
@app_option
@click.option("--sql", is_flag=True, help="Print the SQL that creates the tables instead.")
def setup(app: str, sql: bool) -> None:
    """Create the tables, queues and streams channels need.

    Safe to run again: what exists already is left as it is.
    """
    with opened(app) as messaging:
        if sql:
            _print_sql(messaging)
            return
        messaging.setup()
        click.echo(f"set up {', '.join(messaging.channels) or 'no channels'}")


def _print_sql(messaging: Messaging) -> None:
    statements = messaging.setup_sql()
    if not statements:
        click.echo("-- this application has no SQL tables")
    for statement in statements:
        text = statement.strip()
        click.echo(text if text.endswith(";") else f"{text};")


@click.command()
@app_option
def channels(app: str) -> None:
    """List channels with their kind, depth and the age of their oldest message.

    For an outbox, the oldest age tells whether its relay keeps up.
    """
    rows = [("NAME", "KIND", "DEPTH", "OLDEST")]
    with opened(app) as messaging:
        for name, channel in messaging.channels.items():
            messaging.runtime.preparation.sending(name)
            depth = channel.depth()
            age = channel.oldest_age()
            rows.append(
                (
                    name,
                    type(channel).__name__,
                    "?" if depth is None else str(depth),
                    "-" if age is None else age_text(age),
                )
            )
    table(rows)
