"""The redis-py clients of a Redis channel, made when first used."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import ExponentialWithJitterBackoff

from busway.channels.redis.stream import Command


class Clients:
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
                    self._client = raw_replies(made)
                client = self._client
        return client

    @property
    def aclient(self) -> redis.asyncio.Redis:
        """The asyncio client of the running event loop."""
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aclient[0] is not loop:
            retry = redis.asyncio.retry.Retry(self._backoff(), self._retries)
            client = redis.asyncio.Redis.from_url(self.url, retry=retry, **self._options)
            self._aclient = (loop, raw_replies(client))
        return self._aclient[1]

    def _backoff(self) -> ExponentialWithJitterBackoff:
        return ExponentialWithJitterBackoff(cap=self._max_backoff, base=0.05)

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


def run_command(client: Any, command: Command) -> Any:
    """``client.execute_command(*command)``: one command, from any client or pipeline."""
    return client.execute_command(*command)


def named(commands: list[Command], replies: list[Any]) -> list[Any]:
    """``replies``, each error naming the command and key it came from."""
    for command, reply in zip(commands, replies, strict=True):
        if isinstance(reply, redis.ResponseError):
            reply.args = (f"{command[0]} {command[1]}: {reply}", *reply.args[1:])
    return replies


def raw_replies(client: Any) -> Any:
    """Stream entries as Redis sends them, not made into dicts: cheaper, and one shape."""
    for command in ("XREADGROUP", "XAUTOCLAIM", "XCLAIM"):
        client.set_response_callback(command, lambda response, **_: response)
    return client
