# Generated from src/busway/channels/redis/_async/commands.py by tools/unasync.py: do not edit.
# Change the asyncio source, then run `make generate`.
"""The commands of a Redis channel, on its clients: a pipeline of them, each reply or error,
and the consumer group made again when a command finds it gone."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from busway.channels.redis.clients import Clients, named, run_command
from busway.channels.redis.stream import Command


class Commands(Clients):
    def execute(self, command: Command) -> Any:
        return run_command(self.client, command)

    def pipeline(self, commands: Iterable[Command], transaction: bool = False) -> list[Any]:
        with self.client.pipeline(transaction=transaction) as pipe:
            for command in commands:
                run_command(pipe, command)
            return pipe.execute()

    def replies(self, commands: list[Command]) -> list[Any]:
        """Each command's reply, or the error it met; each one the connection error when the
        retries gave up (nothing is known to be sent then)."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for command in commands:
                    run_command(pipe, command)
                return named(commands, pipe.execute(raise_on_error=False))
        except redis.RedisError as error:
            return [error] * len(commands)

    def call(self, *commands: Command) -> list[Any]:
        """Run ``commands`` in a pipeline; make the group again if it is gone."""
        try:
            return self.pipeline(commands)
        except redis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            # The stream or its group is gone (Redis restarted without persistence): again.
            self.setup()
            return self.pipeline(commands)

    def setup(self) -> None:
        try:
            self.execute(self._create_group)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
