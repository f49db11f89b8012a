"""Messages no busway wrote, published straight to a JetStream subject on the real NATS:
each is one dead letter, the good messages around it are handled, the consumer goes on."""

from __future__ import annotations

from collections.abc import Callable

import nats
import pytest
from test_nats import URL, nats_channel, run_async
from test_nats import nats_in_use as nats_in_use  # fixtures: pytest finds them by name
from test_nats import nats_server as nats_server
from test_nats import streams as streams
from unreadable_support import JOB_TYPE, Job, JobBus, build, check, run

from busway.channels.nats.wire import HEADERS

NESTED = '{"a":' + "[" * 25_000 + "]" * 25_000 + "}"  # NATS headers hold up to 64 kB
GOOD = f'{{"type": "{JOB_TYPE}", "busway.kind": "command"}}'
# (NATS headers, body, the raw busway headers when they cannot be read; None: rejected)
GARBAGE: list[tuple[dict[str, str] | None, bytes, bytes | None]] = [
    (None, b"no headers at all", None),
    ({"foo": "bar"}, b'{"id": "plain headers"}', None),
    ({HEADERS: "{not json"}, b'{"id": "x"}', b"{not json"),
    ({HEADERS: NESTED}, b'{"id": "x"}', NESTED.encode()),
    ({HEADERS: "[1, 2]"}, b'{"id": "x"}', b"[1, 2]"),
    ({HEADERS: '"text"', "other": "1"}, b"", b'"text"'),
    ({HEADERS: GOOD[:-5]}, b'{"id": "x"}', GOOD[:-5].encode()),
    ({HEADERS: "{}"}, b'{"id": "x"}', None),
    ({HEADERS: GOOD}, b"not json", None),
]


async def publish(stream: str, headers: dict[str, str] | None, body: bytes) -> None:
    client = await nats.connect(URL)
    try:
        await client.jetstream().publish(f"{stream}.jobs", body, headers=headers)
    finally:
        await client.close()


@pytest.mark.parametrize("front", ["sync", "asyncio"])
def test_garbage_messages_are_dead_letters_and_the_good_ones_are_handled(
    streams: Callable[[], str], front: str
) -> None:
    stream = streams()
    messaging, jobs = build(nats_channel("jobs", stream))
    bus = messaging.gateway(JobBus)
    good = []
    for number, (headers, body, _) in enumerate(GARBAGE):
        bus.send(Job(f"good-{number}"))
        run_async(publish(stream, headers, body))
        good.append(f"good-{number}")
    bus.send(Job("last"))
    good.append("last")
    try:
        result = run(messaging, front)

        unreadable = [raw for _, _, raw in GARBAGE if raw is not None]
        rejected = sum(raw is None for _, _, raw in GARBAGE)
        check(messaging, jobs, good, unreadable, rejected, result)
    finally:
        messaging.close()
