"""RabbitMQ, each figure against raw aio-pika doing the same work in the same run.

- publish: 20,000 small messages through an asyncio bus, 100 sends in flight, against raw
  aio-pika publishing the same with 100 confirms in flight;
- consume: a 20,000-message backlog drained by one worker (sync, then asyncio) with a no-op
  handler and manual acknowledgements, against a raw aio-pika consumer that decodes each
  body, calls the handler and acknowledges, with the same prefetch;
- relay: a 20,000-row outbox forwarded to RabbitMQ, on SQLite and on PostgreSQL, against raw
  aio-pika publishing the same 20,000 messages with 100 confirms in flight;
- latency: from publish to handler at 200 msg/s, p50 and p99, with ``publish`` and a worker
  thread, and with ``apublish`` and ``arun`` on one event loop, against raw aio-pika on one
  loop publishing persistent messages, each awaiting its confirm, to a consumer that decodes,
  calls and acks.

Override the broker with ``BENCH_AMQP_URL``, PostgreSQL with ``BENCH_POSTGRESQL_URL``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import msgspec
from sqlalchemy import insert

from bench import Result, Skip
from bench.timing import QUICK, Latencies, apaced, latency_results, paced_through
from busway import EventBus, Messaging, SqlChannel, asynchronous, event_handler
from busway.amqp import AmqpChannel
from busway.channels.base import Envelope
from busway.handlers import Kind
from busway.message import SLIP

URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1/")
POSTGRES = os.environ.get("BENCH_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1/test")
COUNT = 2_000 if QUICK else 20_000
IN_FLIGHT = 100
RUNS = 1 if QUICK else 2
RATE = "msg/s"


@dataclass
class Job:
    number: int


@asynchronous("jobs")
class JobEvents(EventBus):
    pass


@asynchronous("outbox", "jobs")
class OutboxEvents(EventBus):
    pass


handled: list[int] = []
latencies = Latencies()


@event_handler
def work(job: Job) -> None:
    handled.append(job.number)


@event_handler
def timed_work(job: Job) -> None:
    latencies.handled(job.number)


def benchmarks() -> list[Result]:
    address = urlsplit(URL)
    try:
        socket.create_connection((address.hostname, address.port or 5672), timeout=3).close()
    except OSError as error:
        raise Skip(f"RabbitMQ at {address.hostname}:{address.port or 5672}: {error}") from error
    queue = f"busway-bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as folder:
        messaging = Messaging(
            handlers=[work],
            channels=[
                AmqpChannel("jobs", URL, queue=queue, prefetch=IN_FLIGHT),
                SqlChannel("outbox", database=f"sqlite:///{Path(folder) / 'outbox.db'}"),
            ],
        )
        messaging.setup()
        try:
            results = [publish(messaging, queue), *consume(messaging, queue)]
            results.append(relay(messaging, queue, "SQLite"))
            on_postgres = _postgres_relay(queue)
            if on_postgres is not None:
                results.append(on_postgres)
            return results + latency(queue)
        finally:
            _raw(queue, lambda channel: channel.queue_delete(queue))
            messaging.close()


def _postgres_relay(queue: str) -> Result | None:
    """The relay from an outbox on PostgreSQL, in a table of its own; None without one."""
    address = urlsplit(POSTGRES)
    try:
        socket.create_connection((address.hostname, address.port or 5432), timeout=3).close()
    except OSError as error:
        print(f"amqp: no relay from PostgreSQL at {address.hostname}: {error}")
        return None
    outbox = SqlChannel("outbox", database=POSTGRES, table="busway_bench_relay")
    messaging = Messaging(channels=[AmqpChannel("jobs", URL, queue=queue), outbox])
    messaging.setup()
    try:
        return relay(messaging, queue, "PostgreSQL")
    finally:
        with outbox.database.engine.begin() as connection:
            outbox.table.drop(connection)
        messaging.close()


def _rate(seconds: float) -> float:
    return COUNT / seconds


def _raw(queue: str, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``work(channel)`` on a raw aio-pika channel with publisher confirms."""

    async def main() -> Any:
        connection = await aio_pika.connect(URL)
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=IN_FLIGHT)
            return await work(channel)
        finally:
            await connection.close()

    return asyncio.run(main())


def _purge(queue: str) -> None:
    async def purge(channel: Any) -> None:
        await (await channel.declare_queue(queue, passive=True)).purge()

    _raw(queue, purge)


Messages = list[tuple[bytes, dict[str, Any]]]


async def _publish_raw(channel: Any, queue: str, messages: Messages) -> None:
    """The hand-written loop: publish with at most ``IN_FLIGHT`` confirms outstanding."""
    window = asyncio.Semaphore(IN_FLIGHT)
    exchange = channel.default_exchange

    async def one(body: bytes, headers: dict[str, Any]) -> None:
        try:
            message = aio_pika.Message(
                body, headers=headers, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            )
            await exchange.publish(message, routing_key=queue)
        finally:
            window.release()

    tasks = []
    for body, headers in messages:
        await window.acquire()
        tasks.append(asyncio.create_task(one(body, headers)))
    await asyncio.gather(*tasks)


def _envelopes(messaging: Messaging, extra: dict[str, Any]) -> list[Envelope]:
    runtime = messaging.runtime
    return [
        runtime.envelope(runtime.new_message(Kind.EVENT, Job(number), None, None, None), extra)
        for number in range(COUNT)
    ]


# -- publishing ----------------------------------------------------------------------------


def publish(messaging: Messaging, queue: str) -> Result:
    bus = messaging.gateway(JobEvents)
    raw_messages = [(e.body, dict(e.headers)) for e in _envelopes(messaging, {})]

    async def with_busway() -> float:
        window = asyncio.Semaphore(IN_FLIGHT)

        async def one(number: int) -> None:
            try:
                await bus.apublish(Job(number))
            finally:
                window.release()

        start = time.perf_counter()
        tasks = []
        for number in range(COUNT):
            await window.acquire()
            tasks.append(asyncio.create_task(one(number)))
        await asyncio.gather(*tasks)
        seconds = time.perf_counter() - start
        await messaging.aclose()
        return _rate(seconds)

    async def raw(channel: Any) -> float:
        start = time.perf_counter()
        await _publish_raw(channel, queue, raw_messages)
        return _rate(time.perf_counter() - start)

    best_busway = best_raw = 0.0
    for _ in range(RUNS):
        _purge(queue)
        best_busway = max(best_busway, asyncio.run(with_busway()))
        _purge(queue)
        best_raw = max(best_raw, _raw(queue, raw))
    _purge(queue)
    return Result(
        f"RabbitMQ: publish {COUNT:,} messages with confirms, asyncio bus, {IN_FLIGHT} in flight",
        best_busway,
        RATE,
        f"raw aio-pika, {IN_FLIGHT} confirms in flight",
        best_raw,
    )


# -- consuming -----------------------------------------------------------------------------


def _backlog(messaging: Messaging, queue: str) -> None:
    raw_messages = [(e.body, dict(e.headers)) for e in _envelopes(messaging, {})]
    _purge(queue)
    _raw(queue, lambda channel: _publish_raw(channel, queue, raw_messages))


def _drain_busway(messaging: Messaging) -> float:
    handled.clear()
    start = time.perf_counter()
    messaging.run("jobs", limit=COUNT)
    seconds = time.perf_counter() - start
    messaging.channel("jobs").close()  # its consumer would fetch from the next backlog
    assert len(handled) == COUNT, f"busway handled {len(handled)} of {COUNT}"
    return _rate(seconds)


def _adrain_busway(messaging: Messaging) -> float:
    async def drain() -> float:
        handled.clear()
        start = time.perf_counter()
        await messaging.arun("jobs", limit=COUNT)
        seconds = time.perf_counter() - start
        await messaging.aclose()
        assert len(handled) == COUNT, f"busway handled {len(handled)} of {COUNT}"
        return _rate(seconds)

    return asyncio.run(drain())


def _drain_raw(queue: str) -> float:
    decode = msgspec.json.Decoder(Job).decode
    done: list[int] = []

    def call(job: Job) -> None:
        done.append(job.number)

    async def drain(channel: Any) -> float:
        finished = asyncio.get_running_loop().create_future()

        async def on_message(message: Any) -> None:
            call(decode(message.body))
            await message.ack()
            if len(done) == COUNT and not finished.done():
                finished.set_result(None)

        declared = await channel.declare_queue(queue, passive=True)
        start = time.perf_counter()
        tag = await declared.consume(on_message)
        await finished
        seconds = time.perf_counter() - start
        await declared.cancel(tag)
        return _rate(seconds)

    return _raw(queue, drain)  # type: ignore[no-any-return]


def consume(messaging: Messaging, queue: str) -> list[Result]:
    best = {"sync": 0.0, "asyncio": 0.0, "raw": 0.0}
    for _ in range(RUNS):
        _backlog(messaging, queue)
        best["sync"] = max(best["sync"], _drain_busway(messaging))
        _backlog(messaging, queue)
        best["asyncio"] = max(best["asyncio"], _adrain_busway(messaging))
        _backlog(messaging, queue)
        best["raw"] = max(best["raw"], _drain_raw(queue))
    baseline = f"raw aio-pika consumer: decode, call, ack; prefetch {IN_FLIGHT}"
    name = f"RabbitMQ: drain {COUNT:,} messages, one worker, no-op handler, manual ack"
    return [
        Result(f"{name}, sync", best["sync"], RATE, baseline, best["raw"]),
        Result(f"{name}, asyncio", best["asyncio"], RATE, baseline, best["raw"]),
    ]


# -- relaying an outbox --------------------------------------------------------------------


def _fill_outbox(messaging: Messaging) -> Messages:
    """Put ``COUNT`` events bound for RabbitMQ in the outbox; the messages they become."""
    outbox = messaging.channel("outbox")
    assert isinstance(outbox, SqlChannel)
    envelopes = _envelopes(messaging, {SLIP: "jobs"})
    with outbox.database.engine.begin() as connection:
        connection.execute(outbox.table.delete())
        connection.execute(insert(outbox.table), [outbox._row(e) for e in envelopes])
    relayed = []
    for envelope in envelopes:
        headers = dict(envelope.headers)
        del headers[SLIP]
        relayed.append((envelope.body, headers))
    return relayed


def relay(messaging: Messaging, queue: str, database: str) -> Result:
    def with_busway() -> float:
        start = time.perf_counter()
        result = messaging.run("outbox")
        seconds = time.perf_counter() - start
        assert result.handled == COUNT, f"the relay forwarded {result.handled} of {COUNT}"
        return _rate(seconds)

    async def raw(channel: Any, messages: Messages) -> float:
        start = time.perf_counter()
        await _publish_raw(channel, queue, messages)
        return _rate(time.perf_counter() - start)

    best_busway = best_raw = 0.0
    for _ in range(RUNS):
        _purge(queue)
        messages = _fill_outbox(messaging)
        best_busway = max(best_busway, with_busway())
        _purge(queue)
        best_raw = max(best_raw, _raw(queue, functools.partial(raw, messages=messages)))
    _purge(queue)
    return Result(
        f"RabbitMQ: relay a {COUNT:,}-row outbox ({database}) with confirms",
        best_busway,
        RATE,
        f"raw aio-pika publishing the same, {IN_FLIGHT} confirms in flight",
        best_raw,
    )


# -- latency -------------------------------------------------------------------------------


def latency(queue: str) -> list[Result]:
    # A Messaging of its own, so that `work`, which would take the messages too, is not in it.
    messaging = Messaging(handlers=[timed_work], channels=[AmqpChannel("jobs", URL, queue=queue)])
    messaging.setup()
    bus = messaging.gateway(JobEvents)
    try:
        _purge(queue)
        worker = messaging.worker("jobs", until_empty=False)
        try:
            paced_through(worker, lambda number: bus.publish(Job(number)), latencies)
        finally:
            messaging.channel("jobs").close()
        sync = latencies.percentiles()

        async def on_one_loop() -> tuple[float, float]:
            worker = messaging.worker("jobs", until_empty=False)
            running = asyncio.create_task(worker.arun())

            async def send(number: int) -> None:
                await bus.apublish(Job(number))

            try:
                await apaced(send, latencies)
            finally:
                worker.stop()
                await running
                await messaging.aclose()
            return latencies.percentiles()

        asyncio_ = asyncio.run(on_one_loop())
    finally:
        messaging.close()
    _purge(queue)
    raw = _raw(queue, functools.partial(_raw_latencies, queue=queue))
    baseline = "raw aio-pika publish, confirm / consume, ack"
    return [
        *latency_results("RabbitMQ, publish and run", sync, baseline, raw),
        *latency_results("RabbitMQ, apublish and arun", asyncio_, baseline, raw),
    ]


async def _raw_latencies(channel: Any, queue: str) -> tuple[float, float]:
    raw = Latencies()
    decode = msgspec.json.Decoder(Job).decode
    exchange = channel.default_exchange

    def call(job: Job) -> None:
        raw.handled(job.number)

    async def on_message(message: Any) -> None:
        call(decode(message.body))
        await message.ack()

    async def send(number: int) -> None:
        message = aio_pika.Message(
            msgspec.json.encode(Job(number)), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
        await exchange.publish(message, routing_key=queue)

    declared = await channel.declare_queue(queue, passive=True)
    tag = await declared.consume(on_message)
    try:
        await apaced(send, raw)
    finally:
        await declared.cancel(tag)
    return raw.percentiles()
