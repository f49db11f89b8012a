"""JetStream's acks of a connection's publishes, to an inbox of its own, one subject each.

An ack settles whatever awaits it as soon as it arrives: a future on the connection's loop,
or a thread blocked in ``publish_from_thread``, which so hops to the loop once per message
and not through a task of its own. (nats-py's ``js.publish`` goes through a request and a
timer per message, and its ``publish_async`` never settles a publish JetStream refused.)
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Callable
from functools import partial

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from busway.channels.nats.queued import Queued

Settle = Callable[[BaseException | None], None]
"""Told the outcome of a publish: ``None`` once JetStream stored it, else the error."""


class Acks:
    """The publishes of one connection whose acks are awaited, by their reply subject."""

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop, queued: Queued) -> None:
        self.client = client
        self.loop = loop
        self.queued = queued
        self.inbox = client.new_inbox()
        self.awaiting: dict[str, Settle] = {}
        self._tokens = itertools.count()

    async def subscribe(self) -> None:
        await self.client.subscribe(f"{self.inbox}.*", cb=self.on_ack)

    async def publish(
        self, subject: str, body: bytes, headers: dict[str, str]
    ) -> asyncio.Future[None]:
        """Publish without waiting: the future JetStream's ack (or refusal) settles."""
        ack = self.loop.create_future()
        token = self._expect(partial(_settle, ack))
        ack.add_done_callback(lambda _ack: self.awaiting.pop(token, None))  # given up on
        await self._send(subject, body, headers, token)
        return ack

    def publish_from_thread(
        self, subject: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> BaseException | None:
        """Publish from a thread other than the loop's and wait there for the ack: ``None``
        once JetStream stored the message, else what went wrong (a timeout among others)."""
        answer = _Answer()
        token = self._expect(answer.settle)
        self.queued.put(partial(self._send, subject, body, headers, token))
        error = answer.wait(timeout)
        if error is not None:
            self.awaiting.pop(token, None)
        return error

    async def on_ack(self, reply: Msg) -> None:
        settle = self.awaiting.pop(reply.subject[len(self.inbox) + 1 :], None)
        if settle is not None:
            settle(_refusal(reply))

    def _expect(self, settle: Settle) -> str:
        token = str(next(self._tokens))
        self.awaiting[token] = settle
        return token

    async def _send(self, subject: str, body: bytes, headers: dict[str, str], token: str) -> None:
        try:
            await self.client.publish(subject, body, f"{self.inbox}.{token}", headers)
        except Exception as error:
            settle = self.awaiting.pop(token, None)
            if settle is not None:
                settle(error)


class _Answer:
    """The outcome of a publish, awaited by a thread."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self._arrived = threading.Lock()
        self._arrived.acquire()

    def settle(self, error: BaseException | None) -> None:
        self.error = error
        self._arrived.release()

    def wait(self, timeout: float) -> BaseException | None:
        if not self._arrived.acquire(timeout=timeout):
            return nats.errors.TimeoutError()
        return self.error


def _settle(ack: asyncio.Future[None], error: BaseException | None) -> None:
    if ack.done():
        return
    if error is None:
        ack.set_result(None)
    else:
        ack.set_exception(error)


def _refusal(reply: Msg) -> Exception | None:
    """The error a publish's reply reports, if any: as ``js.publish`` would raise it."""
    if (reply.headers or {}).get("Status") == "503":
        return nats.js.errors.NoStreamResponseError()
    try:
        response = json.loads(reply.data)
        if "error" in response:
            nats.js.errors.APIError.from_error(response["error"])  # raises the fitting class
    except nats.js.errors.APIError as error:
        return error
    except ValueError as error:
        return nats.js.errors.APIError(description=f"unreadable publish ack: {error}")
    return None
