"""``manage.py busway ...``: the ``busway`` command on the project's Messaging.

Every subcommand of ``busway`` (``run``, ``setup``, ``channels``, ``dead-letter``, ``handlers``,
``inbox``) takes the same arguments here, and its ``--app`` is ``settings.BUSWAY['MESSAGING']``.
"""

from __future__ import annotations

import argparse
from typing import Any

import click
from django.core.management.base import BaseCommand, CommandError

from busway.cli import cli
from busway.django.settings import configured

_EXIT_MEANINGS = {1: "the run stopped on a failed message"}


class Command(BaseCommand):  # type: ignore[misc]  # Django is untyped
    help = (
        "busway's commands on settings.BUSWAY['MESSAGING']: run CHANNEL..., setup, channels, "
        "dead-letter list|show|replay|delete, handlers, inbox; "
        "`manage.py busway COMMAND --help` for one"
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER, metavar="COMMAND [ARGUMENT...]")

    def handle(self, *args: str, **options: Any) -> None:
        spec = configured().messaging
        if not args:
            args = ("--help",)
        try:
            code = cli.main(
                args=list(args),
                prog_name="manage.py busway",
                standalone_mode=False,
                default_map=_app_everywhere(cli, spec),
            )
        except click.ClickException as error:
            raise CommandError(error.format_message(), returncode=error.exit_code) from None
        except click.Abort:
            raise CommandError("aborted", returncode=1) from None
        if isinstance(code, int) and code != 0:
            meaning = _EXIT_MEANINGS.get(code, f"busway exited with code {code}")
            raise CommandError(meaning, returncode=code)


def _app_everywhere(command: click.Command, spec: str) -> dict[str, Any]:
    """A ``default_map`` giving every command's ``--app`` the project's Messaging."""
    if isinstance(command, click.Group):
        return {name: _app_everywhere(sub, spec) for name, sub in command.commands.items()}
    return {"app": spec}
