"""The commands of a Redis channel, on its clients: a pipeline of them, each reply or error,
and the consumer group made again when a command finds it gone."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from busway.channels.redis.clients import Clients, named, run_command
from busway.channels.redis.stream import Command


class AsyncCommands(Clients):
    async def aexecute(self, command: Command) -> Any:
        return await run_command(self.aclient, command)

    async def apipeline(self, commands: Iterable[Command], transaction: bool = False) -> list[Any]:
        async with self.aclient.pipeline(transaction=transaction) as pipe:
            for command in commands:
                run_command(pipe, command)
            return await pipe.execute()

    async def areplies(self, commands: list[Command]) -> list[Any]:
        """Each command's reply, or the error it met; each one the connection error when the
        retries gave up (nothing is known to be sent then)."""
        try:
            async with self.aclient.pipeline(transaction=False) as pipe:
                for command in commands:
                    run_command(pipe, command)
                return named(commands, await pipe.execute(raise_on_error=False))
        except redis.RedisError as error:
            return [error] * len(commands)

    async def acall(self, *commands: Command) -> list[Any]:
        """Run ``commands`` in a pipeline; make the group again if it is gone."""
        try:
            return await self.apipeline(commands)
        except redis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            # The stream or its group is gone (Redis restarted without persistence): again.
            await self.asetup()
            return await self.apipeline(commands)

    async def asetup(self) -> None:
        try:
            await self.aexecute(self._create_group)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
