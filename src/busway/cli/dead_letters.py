"""``busway dead-letter``: list, show, replay and delete messages whose handling failed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from busway.cli.app import app_option, opened
from busway.cli.console import table, when
from busway.cli.values import converted, parse_duration
from busway.message import ORDERING_KEY
from busway.messaging import Messaging
from busway.recovery import DeadLetter

F = TypeVar("F", bound=Callable[..., Any])


def _letter_filters(command: F) -> F:
    options = [
        click.option("--channel", help="Only letters from this channel."),
        click.option("--handler", help="Only letters of this handler."),
        click.option("--error", "error_type", help="Only errors of this type, e.g. KeyError."),
        click.option(
            "--since",
            metavar="DURATION",
            callback=converted(parse_duration),
            help="Only letters that failed within this long, e.g. 1h.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _select(
    messaging: Messaging,
    channel: str | None = None,
    handler: str | None = None,
    error_type: str | None = None,
    since: float | None = None,
) -> list[DeadLetter]:
    return messaging.dead_letters.list(
        channel=channel, handler=handler, error_type=error_type, since=since
    )


def _chosen_ids(
    messaging: Messaging, ids: tuple[str, ...], everything: bool, filters: dict[str, Any]
) -> list[str]:
    if everything == bool(ids):
        raise click.UsageError("give dead letter IDs or --all (not both)")
    if ids and any(value is not None for value in filters.values()):
        raise click.UsageError("the filters --channel, --handler, --error, --since go with --all")
    if ids:
        return list(ids)
    return [letter.id for letter in _select(messaging, **filters)]


@click.group("dead-letter")
def dead_letter() -> None:
    """List, show, replay, skip or delete dead letters; see the keys they hold back."""


@dead_letter.command("list")
@app_option
@_letter_filters
def list_letters(app: str, **filters: Any) -> None:
    """List dead letters, oldest first."""
    rows = [("ID", "CHANNEL", "HANDLER", "KEY", "ATTEMPTS", "FAILED AT", "ERROR")]
    with opened(app) as messaging:
        letters = _select(messaging, **filters)
    for letter in letters:
        rows.append(
            (
                letter.id,
                letter.channel,
                letter.handler or "-",
                str(letter.headers.get(ORDERING_KEY) or "-"),
                str(letter.attempts),
                when(letter.failed_at),
                _error_summary(letter),
            )
        )
    table(rows)
    click.echo(f"{len(letters)} dead letter(s)")


@dead_letter.command("show")
@app_option
@click.argument("letter_id", metavar="ID")
def show_letter(app: str, letter_id: str) -> None:
    """Everything kept about one dead letter: headers, body and traceback."""
    with opened(app) as messaging:
        letter = messaging.dead_letters.get(letter_id)
    if letter is None:
        raise click.ClickException(f"no dead letter has id {letter_id!r}; see `dead-letter list`")
    click.echo(f"id:         {letter.id}")
    click.echo(f"message id: {letter.message_id or '-'}")
    click.echo(f"channel:    {letter.channel}")
    click.echo(f"handler:    {letter.handler or '-'}")
    click.echo(f"attempts:   {letter.attempts}")
    click.echo(f"failed at:  {when(letter.failed_at)}")
    click.echo(f"error:      {letter.error_type}: {letter.error_message}")
    click.echo("headers:")
    for key, value in letter.headers.items():
        click.echo(f"  {key}: {value!r}")
    click.echo("body:")
    click.echo(f"  {_body_text(letter.body)}")
    click.echo("traceback:")
    click.echo(letter.traceback.rstrip())


@dead_letter.command("replay")
@app_option
@click.argument("letter_ids", metavar="[ID]...", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every dead letter the filters match.")
@_letter_filters
def replay_letters(app: str, letter_ids: tuple[str, ...], everything: bool, **filters: Any) -> None:
    """Send dead letters back to their channel, addressed to the handler that failed them."""
    with opened(app) as messaging:
        ids = _chosen_ids(messaging, letter_ids, everything, filters)
        letters = [messaging.dead_letters.get(letter_id) for letter_id in ids]
        kept = [
            letter.id
            for letter in letters
            if letter is not None and messaging.dead_letters.unreadable(letter)
        ]
        replayed = messaging.dead_letters.replay(ids)
    click.echo(f"replayed {replayed} dead letter(s)")
    if kept:
        click.echo(
            f"kept {len(kept)} dead letter(s) whose message's headers still cannot be read "
            f"({', '.join(kept)}): see `dead-letter show ID`, fix the headers or delete them",
            err=True,
        )
    _note_missing(len(ids) - replayed - len(kept))


@dead_letter.command("delete")
@app_option
@click.argument("letter_ids", metavar="[ID]...", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every dead letter the filters match.")
@click.option("--yes", is_flag=True, help="Do not ask before deleting with --all.")
@_letter_filters
def delete_letters(
    app: str, letter_ids: tuple[str, ...], everything: bool, yes: bool, **filters: Any
) -> None:
    """Delete dead letters for good."""
    with opened(app) as messaging:
        ids = _chosen_ids(messaging, letter_ids, everything, filters)
        if everything and ids and not yes:
            click.confirm(f"delete {len(ids)} dead letter(s)?", abort=True)
        deleted = messaging.dead_letters.delete(ids)
    click.echo(f"deleted {deleted} dead letter(s)")
    _note_missing(len(ids) - deleted)


@dead_letter.command("skip")
@app_option
@click.argument("letter_ids", metavar="ID...", nargs=-1, required=True)
def skip_letters(app: str, letter_ids: tuple[str, ...]) -> None:
    """Give up the messages of these letters: the later messages of their ordering keys,
    held back behind them, go on."""
    with opened(app) as messaging:
        skipped = messaging.dead_letters.skip(letter_ids)
    click.echo(f"skipped {skipped} dead letter(s)")
    _note_missing(len(letter_ids) - skipped)


@dead_letter.command("blocked")
@app_option
@click.option("--channel", help="Only keys held back on this channel.")
def blocked_keys(app: str, channel: str | None) -> None:
    """The ordering keys dead letters hold back, and how many messages wait behind each:
    replay the letter (once its handler is fixed) or skip it to let them go."""
    rows = [("CHANNEL", "KEY", "WAITING", "LETTERS")]
    with opened(app) as messaging:
        blocked = messaging.dead_letters.blocked(channel=channel)
    for key in blocked:
        waiting = "?" if key.waiting is None else str(key.waiting)
        rows.append((key.channel, key.ordering_key, waiting, " ".join(key.letters)))
    table(rows)
    click.echo(f"{len(blocked)} key(s) held back")


def _error_summary(letter: DeadLetter) -> str:
    lines = letter.error_message.strip().splitlines()
    text = f"{letter.error_type.rpartition('.')[2]}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= 80 else text[:77] + "..."


def _note_missing(count: int) -> None:
    if count > 0:
        click.echo(f"{count} ID(s) matched no dead letter", err=True)


def _body_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return repr(body)
