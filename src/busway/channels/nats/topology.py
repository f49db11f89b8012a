"""The stream and the durable pull consumer a channel needs, declared or looked for."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from busway.channels.nats.link import TRANSIENT
from busway.errors import BuswayError, ConfigurationError

if TYPE_CHECKING:
    from busway.channels.nats.channel import NatsChannel


async def declare(js: JetStreamContext, channel: NatsChannel) -> None:
    """The stream (unless one already takes the subject) and the durable pull consumer."""
    try:
        info = await js.stream_info(channel.stream)
    except nats.js.errors.NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=channel.stream,
                subjects=[channel.subject],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
            )
        )
    else:
        subjects = (info.config.subjects or []) if info.config else []
        if not any(subject_matches(pattern, channel.subject) for pattern in subjects):
            raise ConfigurationError(
                f"NATS channel {channel.name!r}: stream {channel.stream!r} exists but does not "
                f"take subject {channel.subject!r} (it takes {', '.join(subjects) or 'none'}); "
                "add the subject to the stream or choose another stream name"
            )
    await js.add_consumer(
        channel.stream,
        ConsumerConfig(
            durable_name=channel.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=channel.ack_wait,
            max_deliver=-1,  # busway's retry policy decides, and re-sends retries anew
            max_ack_pending=-1,  # messages waiting out a nak delay count as pending
        ),
    )


async def require_stream(js: JetStreamContext, channel: NatsChannel) -> None:
    """Raise ``ConfigurationError`` if the channel's stream does not exist; a publish that no
    stream answered may also be one that met a stream electing its leader."""
    with contextlib.suppress(*TRANSIENT):
        try:
            await js.stream_info(channel.stream)
        except nats.js.errors.NotFoundError as error:
            raise ConfigurationError(
                f"NATS channel {channel.name!r}: stream {channel.stream!r} does not exist on "
                f"{channel.url}; run messaging.setup() or `busway setup` first"
            ) from error


def failure(channel: NatsChannel, error: BaseException) -> BaseException:
    """The error to raise for a publish that failed for good: a refusal says by whom."""
    if not isinstance(error, nats.js.errors.APIError):
        return error
    refused = BuswayError(
        f"NATS channel {channel.name!r}: JetStream refused a message for stream "
        f"{channel.stream!r}: {error}; see the stream's limits and the server's log"
    )
    refused.__cause__ = error
    return refused


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether NATS subject ``pattern`` (with ``*`` and ``>`` wildcards) takes ``subject``."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or token not in ("*", tokens[index]):
            return False
    return len(tokens) == len(wanted)
