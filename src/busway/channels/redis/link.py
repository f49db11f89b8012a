"""The redis-py clients of a Redis channel: the sync and asyncio edges every command goes
through."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import ExponentialWithJitterBackoff

from busway.channels.redis.stream import Command


class Link:
    """One sync client, shared by threads, and one asyncio client per event loop.

    Commands that lose the connection are retried ``retries`` times, backing off up to
    ``max_backoff`` seconds. ``create_group`` makes the consumer group: ``setup`` runs it, and
    ``call`` again when a command finds the group gone.
    """

    def __init__(
        self,
        url: str,
        create_group: Command,
        retries: int,
        max_backoff: float,
        options: dict[str, Any],
    ) -> None:
        self.url = url
        self._create_group = create_group
        self._retries = retries
        self._max_backoff = max_backoff
        self._options = options
        self._client: redis.Redis | None = None
        self._aclient: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis] | None = None
        self._connecting = threading.Lock()

    @property
    def client(self) -> redis.Redis:
        client = self._client
        if client is None:
            with self._connecting:
                if self._client is None:
                    retry = redis.retry.Retry(self._backoff(), self._retries)
                    made = redis.Redis.from_url(self.url, retry=retry, **self._options)
                    self._client = _raw_replies(made)
                client = self._client
        return client

    @property
    def aclient(self) -> redis.asyncio.Redis:
        """The asyncio client of the running event loop."""
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aclient[0] is not loop:
            retry = redis.asyncio.retry.Retry(self._backoff(), self._retries)
            client = redis.asyncio.Redis.from_url(self.url, retry=retry, **self._options)
            self._aclient = (loop, _raw_replies(client))
        return self._aclient[1]

    def _backoff(self) -> ExponentialWithJitterBackoff:
        return ExponentialWithJitterBackoff(cap=self._max_backoff, base=0.05)

    # -- commands --------------------------------------------------------------------------

    def execute(self, command: Command) -> Any:
        return _execute(self.client, command)

    async def aexecute(self, command: Command) -> Any:
        return await _execute(self.aclient, command)

    def pipeline(self, commands: Iterable[Command], transaction: bool = False) -> list[Any]:
        with self.client.pipeline(transaction=transaction) as pipe:
            for command in commands:
                _execute(pipe, command)
            return pipe.execute()

    async def apipeline(self, commands: Iterable[Command], transaction: bool = False) -> list[Any]:
        async with self.aclient.pipeline(transaction=transaction) as pipe:
            for command in commands:
                _execute(pipe, command)
            return await pipe.execute()

    def replies(self, commands: list[Command]) -> list[Any]:
        """Each command's reply, or the error it met; each one the connection error when the
        retries gave up (nothing is known to be sent then)."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for command in commands:
                    _execute(pipe, command)
                return _named(commands, pipe.execute(raise_on_error=False))
        except redis.RedisError as error:
            return [error] * len(commands)

    async def areplies(self, commands: list[Command]) -> list[Any]:
        try:
            async with self.aclient.pipeline(transaction=False) as pipe:
                for command in commands:
                    _execute(pipe, command)
                return _named(commands, await pipe.execute(raise_on_error=False))
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

    async def acall(self, *commands: Command) -> list[Any]:
        try:
            return await self.apipeline(commands)
        except redis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            await self.asetup()
            return await self.apipeline(commands)

    def setup(self) -> None:
        try:
            self.execute(self._create_group)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def asetup(self) -> None:
        try:
            await self.aexecute(self._create_group)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    # -- closing ---------------------------------------------------------------------------

    def loop_client(self) -> redis.asyncio.Redis | None:
        """The asyncio client, if it was made on the running event loop."""
        if self._aclient is not None and self._aclient[0] is asyncio.get_running_loop():
            return self._aclient[1]
        return None

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the asyncio client of the running loop; forget one made on another loop."""
        client, self._aclient = self.loop_client(), None
        if client is not None:
            await client.aclose()


def _execute(client: Any, command: Command) -> Any:
    """``client.execute_command(*command)``: one command, from any client or pipeline."""
    return client.execute_command(*command)


def _named(commands: list[Command], replies: list[Any]) -> list[Any]:
    """``replies``, each error naming the command and key it came from."""
    for command, reply in zip(commands, replies, strict=True):
        if isinstance(reply, redis.ResponseError):
            reply.args = (f"{command[0]} {command[1]}: {reply}", *reply.args[1:])
    return replies


def _raw_replies(client: Any) -> Any:
    """Stream entries as Redis sends them, not made into dicts: cheaper, and one shape."""
    for command in ("XREADGROUP", "XAUTOCLAIM", "XCLAIM"):
        client.set_response_callback(command, lambda response, **_: response)
    return client
