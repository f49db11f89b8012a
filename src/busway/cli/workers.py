"""``busway workers`` and ``busway health``: which workers run, and whether messages flow."""

from __future__ import annotations

import click

from busway.cli.app import ConfigError, app_option, opened
from busway.cli.console import age_text, table, when
from busway.cli.values import converted, parse_duration
from busway.errors import UnknownChannelError

EXIT_UNHEALTHY = 1

_SILENT_AFTER_HELP = (
    "Call a worker silent once its last heartbeat is this old "
    "[default: three of its own beat intervals]."
)
_NO_DATABASE = (
    "this application has no database: only the workers of this process are known, "
    "and it runs none (see docs/operations.md)"
)


@click.command()
@app_option
@click.option(
    "--silent-after",
    metavar="DURATION",
    callback=converted(parse_duration),
    help=_SILENT_AFTER_HELP,
)
@click.option(
    "--forget-silent",
    metavar="DURATION",
    callback=converted(parse_duration),
    help="First forget the workers silent for longer than this, e.g. 1d.",
)
def workers(app: str, silent_after: float | None, forget_silent: float | None) -> None:
    """List the running workers by their heartbeats; SILENT marks one that stopped beating
    (killed, or on a lost host)."""
    with opened(app) as messaging:
        if messaging.database is None:
            click.echo(f"note: {_NO_DATABASE}", err=True)
        if forget_silent is not None:
            click.echo(f"forgot {messaging.forget_workers(forget_silent)} silent worker(s)")
        found = messaging.workers(silent_after)
    rows = [("ID", "HOST", "PID", "CHANNELS", "STARTED", "LAST BEAT", "HANDLED", "FAILED", "STATE")]
    for worker in found:
        rows.append(
            (
                worker.worker_id,
                worker.host,
                str(worker.pid),
                ",".join(worker.channels),
                when(worker.started),
                f"{age_text(worker.silent_for)} ago",
                str(worker.handled),
                str(worker.failed),
                "alive" if worker.alive else "SILENT",
            )
        )
    table(rows)
    silent = sum(not worker.alive for worker in found)
    click.echo(f"{len(found)} worker(s), {silent} silent")


@click.command()
@app_option
@click.option(
    "--max-age",
    metavar="DURATION",
    default="60s",
    show_default=True,
    callback=converted(parse_duration),
    help="Unhealthy when a channel's oldest message is older than this.",
)
@click.option(
    "--channel",
    "channels",
    metavar="CHANNEL",
    multiple=True,
    help="Check this channel only (repeat for more) [default: every channel].",
)
@click.option(
    "--silent-after",
    metavar="DURATION",
    callback=converted(parse_duration),
    help=_SILENT_AFTER_HELP,
)
@click.pass_context
def health(
    ctx: click.Context,
    app: str,
    max_age: float,
    channels: tuple[str, ...],
    silent_after: float | None,
) -> None:
    """Exit 0 when messages flow; 1, saying why, when a channel's oldest message is older
    than --max-age or no live worker consumes it. For readiness and liveness probes."""
    with opened(app) as messaging:
        try:
            result = messaging.health(max_age, channels or None, silent_after)
        except UnknownChannelError as error:
            raise ConfigError(str(error)) from None
        no_database = messaging.database is None
    rows = [("CHANNEL", "DEPTH", "OLDEST", "WORKERS", "STATE")]
    for channel in result.channels:
        rows.append(
            (
                channel.channel,
                "?" if channel.depth is None else str(channel.depth),
                "-" if channel.oldest_age is None else age_text(channel.oldest_age),
                str(channel.workers),
                "ok" if channel.ok else "UNHEALTHY",
            )
        )
    table(rows)
    if result.ok:
        click.echo("healthy")
        return
    for problem in result.problems:
        click.echo(f"unhealthy: {problem}")
    if no_database:
        click.echo(f"note: {_NO_DATABASE}", err=True)
    ctx.exit(EXIT_UNHEALTHY)
