"""NATS JetStream: NatsChannel against raw nats-py doing the same work, in the same run.

- publish: small commands sent one by one through a gateway, each waiting for JetStream's
  publish ack, from asyncio (``asend``) against raw nats-py awaiting ``js.publish`` for each
  message, and from sync code (``send``, which hops to busway's helper loop and back) against
  raw nats-py driven the same way from sync code, through an event loop on another thread;
- drain: the backlog consumed by one worker with a no-op handler, explicit ack per message,
  with ``run`` and with ``arun``, against a raw loop that fetches 100 at a time from the same
  durable pull consumer, decodes each body, calls the handler and acks it;
- publish + consume: both together, the figure the target is set for (aim: at least 0.8x);
  the sync path against raw nats-py publishing from sync code the same way, then draining;
- latency: from send to handler at 200 msg/s, p50 and p99, with ``send`` and a worker thread,
  and with ``asend`` and ``arun`` on one event loop, against raw nats-py on one loop awaiting
  each ``js.publish`` while a pull consumer fetches one message at a time, decodes, calls and
  acks it.

The server comes from ``BENCH_NATS_URL`` (default ``nats://127.0.0.1:4222``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgspec
import nats

from bench import Result, Skip
from bench.timing import QUICK, Latencies, apaced, latency_results, paced_through
from busway import CommandBus, Messaging, asynchronous, command_handler
from busway.nats import NatsChannel

URL = os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")
COUNT = 2_000 if QUICK else 20_000
RUNS = 2 if QUICK else 3


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


@dataclass
class Timings:
    """Best seconds of each phase over the runs."""

    publish: float = float("inf")
    consume: float = float("inf")
    together: float = float("inf")
    publish_from_sync: float = float("inf")

    def add(self, publish: float, consume: float) -> None:
        self.publish = min(self.publish, publish)
        self.consume = min(self.consume, consume)
        self.together = min(self.together, publish + consume)


def benchmarks() -> list[Result]:
    parts = urlsplit(URL)
    try:
        socket.create_connection((parts.hostname, parts.port or 4222), timeout=3).close()
    except OSError as error:
        raise Skip(f"NATS at {URL} is unreachable ({error})") from None
    stream = f"bench_busway_{uuid.uuid4().hex[:8]}"
    channel = NatsChannel("jobs", URL, stream=stream, subject=f"{stream}.jobs")
    messaging = Messaging(handlers=[work], channels=[channel])
    messaging.setup()
    sync, asyncio_, raw = Timings(), Timings(), Timings()
    try:
        for _ in range(RUNS):
            asyncio_.add(*_run(_busway_asyncio(messaging)))
            raw.add(*_run(_raw(channel)))
            sync.add(*_busway_sync(messaging))
            raw.publish_from_sync = min(raw.publish_from_sync, _raw_from_sync(channel))
    finally:
        messaging.close()
        _run(_delete_stream(stream))
    both, drain = "raw nats-py, the same two loops", "raw nats-py, fetch 100 + decode + call + ack"
    from_sync = raw.publish_from_sync + raw.consume
    return [
        _result("publish + consume, asend and arun", asyncio_.together, both, raw.together),
        _result(
            "publish + consume, send and run",
            sync.together,
            "raw nats-py, the same two loops, publishing from sync code via a loop thread",
            from_sync,
        ),
        _result(
            "publish, asend waits for each ack",
            asyncio_.publish,
            "raw nats-py, js.publish awaited in turn",
            raw.publish,
        ),
        _result(
            "publish, send waits for each ack",
            sync.publish,
            "raw nats-py from sync code, via a loop thread",
            raw.publish_from_sync,
        ),
        _result("drain, explicit ack, run", sync.consume, drain, raw.consume),
        _result("drain, explicit ack, arun", asyncio_.consume, drain, raw.consume),
        *latency(f"{stream}_latency"),
    ]


def _result(what: str, seconds: float, baseline: str, raw_seconds: float) -> Result:
    return Result(
        f"NATS: {what}, {COUNT:,} messages", COUNT / seconds, "msg/s", baseline, COUNT / raw_seconds
    )


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


def _timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _busway_sync(messaging: Messaging) -> tuple[float, float]:
    bus = messaging.gateway(JobBus)
    handled.clear()

    def publish() -> None:
        for number in range(COUNT):
            bus.send(Job(number))

    publishing = _timed(publish)
    consuming = _timed(lambda: messaging.run("jobs", limit=COUNT))
    assert len(handled) == COUNT, f"busway handled {len(handled)} of {COUNT}"
    return publishing, consuming


async def _busway_asyncio(messaging: Messaging) -> tuple[float, float]:
    bus = messaging.gateway(JobBus)
    handled.clear()
    channel = messaging.channel("jobs")
    assert isinstance(channel, NatsChannel)
    await channel.adepth()  # connect on this loop before the clock starts
    try:
        start = time.perf_counter()
        for number in range(COUNT):
            await bus.asend(Job(number))
        publishing = time.perf_counter() - start
        start = time.perf_counter()
        await messaging.arun("jobs", limit=COUNT)
        consuming = time.perf_counter() - start
    finally:
        await channel.aclose()
    assert len(handled) == COUNT, f"busway handled {len(handled)} of {COUNT}"
    return publishing, consuming


async def _raw(channel: NatsChannel) -> tuple[float, float]:
    client = await nats.connect(URL)
    js = client.jetstream()
    subscription = await js.pull_subscribe_bind(channel.durable, channel.stream)
    decode = msgspec.json.Decoder(Job).decode
    body = msgspec.json.encode(Job(1))
    done: list[int] = []

    def call(job: Job) -> None:
        done.append(job.number)

    try:
        start = time.perf_counter()
        for _ in range(COUNT):
            await js.publish(channel.subject, body)
        publishing = time.perf_counter() - start
        start = time.perf_counter()
        while len(done) < COUNT:
            for message in await subscription.fetch(100, timeout=1):
                call(decode(message.data))
                await message.ack()
        consuming = time.perf_counter() - start
    finally:
        await client.close()
    return publishing, consuming


def _raw_from_sync(channel: NatsChannel) -> float:
    """Seconds raw nats-py takes to publish from sync code: each call hops to a loop thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    try:
        client = call(nats.connect(URL))
        js = client.jetstream()
        body = msgspec.json.encode(Job(1))
        start = time.perf_counter()
        for _ in range(COUNT):
            call(js.publish(channel.subject, body))
        seconds = time.perf_counter() - start
        call(js.purge_stream(channel.stream))
        call(client.close())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
    return seconds


async def _delete_stream(stream: str) -> None:
    client = await nats.connect(URL)
    try:
        await client.jetstream().delete_stream(stream)
    finally:
        await client.close()


# -- latency -------------------------------------------------------------------------------


def latency(stream: str) -> list[Result]:
    # A Messaging of its own, so that `work`, which would take the messages too, is not in it.
    channel = NatsChannel("jobs", URL, stream=stream, subject=f"{stream}.jobs")
    messaging = Messaging(handlers=[timed_work], channels=[channel])
    messaging.setup()
    bus = messaging.gateway(JobBus)
    try:
        worker = messaging.worker("jobs", until_empty=False)
        paced_through(worker, lambda number: bus.send(Job(number)), latencies)
        sync = latencies.percentiles()

        async def on_one_loop() -> tuple[float, float]:
            worker = messaging.worker("jobs", until_empty=False)
            running = asyncio.create_task(worker.arun())

            async def send(number: int) -> None:
                await bus.asend(Job(number))

            try:
                await apaced(send, latencies)
            finally:
                worker.stop()
                await running
                await channel.aclose()
            return latencies.percentiles()

        asyncio_ = _run(on_one_loop())
        messaging.close()
        raw = _run(_raw_latencies(channel))
    finally:
        messaging.close()
        _run(_delete_stream(stream))
    baseline = "raw nats-py js.publish / fetch 1 + decode + call + ack"
    return [
        *latency_results("NATS, send and run", sync, baseline, raw),
        *latency_results("NATS, asend and arun", asyncio_, baseline, raw),
    ]


async def _raw_latencies(channel: NatsChannel) -> tuple[float, float]:
    raw = Latencies()
    client = await nats.connect(URL)
    js = client.jetstream()
    subscription = await js.pull_subscribe_bind(channel.durable, channel.stream)
    decode = msgspec.json.Decoder(Job).decode
    stop = asyncio.Event()

    def call(job: Job) -> None:
        raw.handled(job.number)

    async def consume() -> None:
        while not stop.is_set():
            try:
                messages = await subscription.fetch(1, timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            for message in messages:
                call(decode(message.data))
                await message.ack()

    async def send(number: int) -> None:
        await js.publish(channel.subject, msgspec.json.encode(Job(number)))

    consuming = asyncio.create_task(consume())
    try:
        await apaced(send, raw)
    finally:
        stop.set()
        await consuming
        await client.close()
    return raw.percentiles()
