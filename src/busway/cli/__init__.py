"""The ``busway`` command: run workers, set up channels, inspect and replay dead letters,
see the running workers and check health.

Every command takes ``--app module:attribute`` (or ``BUSWAY_APP``) naming the application's
``Messaging`` object. Exit codes: 0 when a run stops normally, 1 when it stopped on a failed
message (or ``health`` found a problem), 2 for a usage or configuration error.
"""

from __future__ import annotations

from collections.abc import Iterable

import click

from busway import __version__
from busway.cli.app import ConfigError, load_messaging
from busway.cli.channels import channels, setup
from busway.cli.dashboard import dashboard
from busway.cli.dead_letters import dead_letter
from busway.cli.handlers import handlers, inbox
from busway.cli.run import run
from busway.cli.schedules import schedules
from busway.cli.workers import health, workers

__all__ = ["ConfigError", "cli", "load_messaging", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="busway")
def cli() -> None:
    """busway: command, event and query buses, and the workers that consume their channels."""


cli.add_command(run)
cli.add_command(setup)
cli.add_command(channels)
cli.add_command(dead_letter)
cli.add_command(handlers)
cli.add_command(inbox)
cli.add_command(schedules)
cli.add_command(dashboard)
cli.add_command(workers)
cli.add_command(health)


def main(argv: Iterable[str] | None = None) -> None:
    """The console script."""
    cli.main(args=None if argv is None else list(argv), prog_name="busway")
