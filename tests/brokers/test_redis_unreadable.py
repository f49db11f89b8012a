"""Stream entries no busway wrote, on the real Redis: each is one dead letter, the good
messages around it are handled, the consumer goes on."""

from __future__ import annotations

import pytest
import redis
from test_redis import REDIS_URL
from test_redis import client as client  # fixtures: pytest finds them by name
from test_redis import redis_in_use as redis_in_use
from test_redis import stream as stream
from unreadable_support import NESTED, Job, JobBus, build, check, run

from busway.redis import RedisChannel

# (fields of the entry, its raw headers when it cannot be read; None: the core rejects it)
GARBAGE: list[tuple[dict[bytes, bytes], bytes | None]] = [
    ({b"headers": b"{not json", b"body": b'{"id": "x"}'}, b"{not json"),
    ({b"headers": NESTED.encode(), b"body": b"{}"}, NESTED.encode()),
    ({b"headers": b"[]", b"body": b"{}"}, b"[]"),
    ({b"headers": b"", b"body": b"{}"}, b""),
    ({b"headers": b'{"type": "\xff"}', b"body": b"{}"}, b'{"type": "\xff"}'),
    ({b"body": b'{"id": "no headers"}'}, b""),
    ({b"something": b"else"}, b""),
    ({b"headers": b"null", b"body": b"{}", b"extra": b"field"}, b"null"),
    ({b"headers": b"{}", b"body": b"{}"}, None),
    ({b"headers": b'{"type": ["x"], "busway.kind": 1}', b"body": b"\xff"}, None),
]


@pytest.mark.parametrize("front", ["sync", "asyncio"])
def test_garbage_entries_are_dead_letters_and_the_good_ones_are_handled(
    client: redis.Redis, stream: str, front: str
) -> None:
    messaging, jobs = build(RedisChannel("jobs", REDIS_URL, stream=stream))
    bus = messaging.gateway(JobBus)
    good = []
    for number, (fields, _) in enumerate(GARBAGE):
        bus.send(Job(f"good-{number}"))
        client.xadd(stream, fields)  # type: ignore[arg-type]
        good.append(f"good-{number}")
    bus.send(Job("last"))
    good.append("last")
    try:
        result = run(messaging, front)

        unreadable = [raw for _, raw in GARBAGE if raw is not None]
        rejected = sum(raw is None for _, raw in GARBAGE)
        check(messaging, jobs, good, unreadable, rejected, result)
        assert messaging.channel("jobs").depth() == 0
    finally:
        messaging.close()
