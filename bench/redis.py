"""Redis Streams, each figure against raw redis-py doing the same work.

- drain: a backlog of small commands consumed by one worker with a no-op handler, against a
  raw loop that reads 100 entries with XREADGROUP, decodes each body, calls the handler and
  acknowledges the 100 with one XACK;
- drain, the channel alone: the same backlog read, handed out and acknowledged by the channel,
  with a callback that does nothing, against the same raw loop: what the transport costs,
  apart from the core's dispatch and the worker;
- publish: ``bus.send`` of one small command to a Redis channel, against a raw XADD of the
  same headers and an encoded body;
- latency: from ``send`` to the handler run by a worker thread, at 200 msg/s, p50 and p99,
  against raw XADD from one thread to a blocking XREADGROUP + decode + call + XACK loop in
  another.

The server is ``BENCH_REDIS_URL`` (default: Redis on loopback); unreachable, these are skipped.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
import redis

from bench import Result, Skip
from bench.timing import QUICK, Latencies, compare, latency_results, paced, paced_through
from busway import CommandBus, Messaging, asynchronous, command_handler
from busway.channels.base import Delivery
from busway.handlers import Kind
from busway.redis import RedisChannel

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
DRAIN = 2_000 if QUICK else 20_000
BATCH = 100
RAW_HEADERS = msgspec.json.encode(
    {"id": str(uuid.uuid4()), "type": "bench.redis.Job", "busway.kind": "command"}
)
"""The headers field of a raw entry: what busway's would hold, near enough."""


@dataclass
class Job:
    number: int


@asynchronous("jobs")
class JobBus(CommandBus):
    pass


handled: list[int] = []
latencies = Latencies()


@command_handler
def work(job: Job) -> None:
    handled.append(job.number)


@command_handler
def timed_work(job: Job) -> None:
    latencies.handled(job.number)


def benchmarks() -> list[Result]:
    client = redis.Redis.from_url(URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as error:
        raise Skip(f"Redis at {URL} is unreachable ({error})") from None
    stream = f"bench:{{{uuid.uuid4().hex}}}"
    channel = RedisChannel("jobs", URL, stream=stream, batch_size=BATCH)
    messaging = Messaging(handlers=[work], channels=[channel])
    messaging.setup()
    try:
        return [
            *drain(messaging, channel, client),
            publish(messaging, channel, client),
            *latency(stream),
        ]
    finally:
        messaging.close()
        client.delete(stream, f"{stream}:delayed", f"{stream}:raw")
        client.delete(f"{stream}:latency", f"{stream}:latency:delayed")
        client.close()


def _fill(messaging: Messaging, channel: RedisChannel, count: int) -> None:
    """Put ``count`` valid messages for ``work`` on the channel's stream, pipelined."""
    runtime = messaging.runtime
    now = time.time()
    for start in range(0, count, 1_000):
        with channel.client.pipeline(transaction=False) as pipe:
            for number in range(start, min(count, start + 1_000)):
                message = runtime.new_message(Kind.COMMAND, Job(number), None, None, None)
                command = channel._stream.send(runtime.envelope(message, {}), now)
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            pipe.execute()


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("nan")


def _drain_busway(messaging: Messaging, count: int) -> float:
    handled.clear()
    start = time.perf_counter()
    messaging.run("jobs", limit=count)
    seconds = time.perf_counter() - start
    assert len(handled) == count, f"busway handled {len(handled)} of {count}"
    return _rate(count, seconds)


def _drain_channel(channel: RedisChannel, count: int) -> float:
    seen = 0

    def take(_delivery: Delivery) -> None:
        nonlocal seen
        seen += 1

    start = time.perf_counter()
    while seen < count and channel.consume(take, BATCH, 0):
        pass
    seconds = time.perf_counter() - start
    assert seen == count, f"the channel handed out {seen} of {count}"
    return _rate(count, seconds)


def _drain_raw(client: redis.Redis, stream: str, count: int) -> float:
    decode = msgspec.json.Decoder(Job).decode
    done: list[int] = []

    def call(job: Job) -> None:
        done.append(job.number)

    group = f"raw-{uuid.uuid4().hex}"
    client.xgroup_create(stream, group, "0")
    start = time.perf_counter()
    while len(done) < count:
        reply: Any = client.xreadgroup(group, "raw", {stream: ">"}, count=BATCH)
        if not reply:
            break
        entries = _entries(reply)
        for _entry_id, fields in entries:
            call(decode(fields[b"body"]))
        client.xack(stream, group, *[entry_id for entry_id, _ in entries])
    seconds = time.perf_counter() - start
    client.xgroup_destroy(stream, group)
    client.delete(stream)
    assert len(done) == count, f"the raw loop handled {len(done)} of {count}"
    return _rate(count, seconds)


def _entries(reply: Any) -> Any:
    """The entries of an XREADGROUP reply on one stream, as RESP2 or RESP3 has it."""
    if not reply:
        return []
    return next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]


def drain(messaging: Messaging, channel: RedisChannel, client: redis.Redis) -> list[Result]:
    best_busway = best_channel = best_raw = 0.0
    for _ in range(1 if QUICK else 3):
        _fill(messaging, channel, DRAIN)
        best_busway = max(best_busway, _drain_busway(messaging, DRAIN))
        _fill(messaging, channel, DRAIN)
        best_channel = max(best_channel, _drain_channel(channel, DRAIN))
        _fill(messaging, channel, DRAIN)
        best_raw = max(best_raw, _drain_raw(client, channel.stream, DRAIN))
        messaging.setup()  # the raw loop deleted the stream
    raw = f"raw XREADGROUP {BATCH} + decode + call + XACK loop"
    return [
        Result(
            f"Redis Streams: drain {DRAIN:,} messages, one worker, no-op handler",
            best_busway,
            "msg/s",
            raw,
            best_raw,
        ),
        Result(
            f"Redis Streams: drain {DRAIN:,} messages, the channel alone, no-op callback",
            best_channel,
            "msg/s",
            raw,
            best_raw,
        ),
    ]


def publish(messaging: Messaging, channel: RedisChannel, client: redis.Redis) -> Result:
    bus = messaging.gateway(JobBus)
    raw_stream = f"{channel.stream}:raw"
    encode = msgspec.json.encode
    headers = RAW_HEADERS

    def through_busway(n: int) -> None:
        for number in range(n):
            bus.send(Job(number))

    def raw(n: int) -> None:
        for number in range(n):
            client.xadd(raw_stream, {"headers": headers, "body": encode(Job(number))})

    busway_seconds, raw_seconds = compare(through_busway, raw)
    client.delete(channel.stream, raw_stream)
    return Result(
        "Redis Streams: publish, one XADD per message",
        1 / busway_seconds,
        "msg/s",
        "raw XADD of the same headers and an encoded body",
        1 / raw_seconds,
    )


def latency(stream: str) -> list[Result]:
    # A Messaging of its own, so that `work`, which would take the messages too, is not in it.
    channel = RedisChannel("jobs", URL, stream=f"{stream}:latency")
    messaging = Messaging(handlers=[timed_work], channels=[channel])
    messaging.setup()
    bus = messaging.gateway(JobBus)
    worker = messaging.worker("jobs", until_empty=False)
    try:
        paced_through(worker, lambda number: bus.send(Job(number)), latencies)
    finally:
        messaging.close()
    baseline = "raw XADD / XREADGROUP BLOCK + decode + call + XACK"
    return latency_results(
        "Redis Streams", latencies.percentiles(), baseline, _raw_latencies(f"{stream}:raw")
    )


def _raw_latencies(stream: str) -> tuple[float, float]:
    raw = Latencies()
    decode = msgspec.json.Decoder(Job).decode
    stop = threading.Event()
    group = "raw"
    producer = redis.Redis.from_url(URL)
    producer.xgroup_create(stream, group, "$", mkstream=True)

    def call(job: Job) -> None:
        raw.handled(job.number)

    def consume() -> None:
        consumer = redis.Redis.from_url(URL)
        while not stop.is_set():
            reply: Any = consumer.xreadgroup(group, "raw", {stream: ">"}, count=BATCH, block=100)
            entries = _entries(reply)
            for _entry_id, fields in entries:
                call(decode(fields[b"body"]))
            if entries:
                consumer.xack(stream, group, *[entry_id for entry_id, _ in entries])
        consumer.close()

    def send(number: int) -> None:
        producer.xadd(stream, {"headers": RAW_HEADERS, "body": msgspec.json.encode(Job(number))})

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        paced(send, raw)
    finally:
        stop.set()
        thread.join()
        producer.close()
    return raw.percentiles()
