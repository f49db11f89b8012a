"""Prometheus metrics: what was sent, handled, retried and dead-lettered, and how deep each
channel is.

``Messaging(instruments=[Metrics()])`` counts, per channel and handler, and exposes the counts
with ``busway run --metrics-port N``, or in an application's own server through
``metrics.asgi_app()`` / ``metrics.wsgi_app()`` (``pip install busway[prometheus]``). Labels
are channel names, handler names and error classes, which the application defines: never a
message id, so the number of series stays bounded. What is counted is what travels through
channels: a handler a gateway calls at once, through no channel, is a function call of its
caller's, and no metric sees it.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from busway._internal.instruments import Instrument, failure_of
from busway.channels.base import Channel, Delivery, Envelope
from busway.errors import extra_required
from busway.interceptors import Invocation
from busway.recovery import DeadLetter

with extra_required("busway.metrics", "prometheus"):
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.registry import Collector


class Metrics(Instrument):
    """Counters, a histogram of handling time, and gauges of channel depth and oldest age.

    ``registry``: where the metrics are registered; a new one by default, so that two
    ``Messaging`` in one process never clash. Pass ``prometheus_client.REGISTRY`` to add them
    to the process's default registry. ``depth``: whether a scrape asks each channel for its
    depth and oldest age (one query per channel, for a SQL channel).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "busway",
        depth: bool = True,
        buckets: Iterable[float] = Histogram.DEFAULT_BUCKETS,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._channels: Mapping[str, Channel] = {}
        self._bounds = tuple(sorted({*buckets, math.inf}))
        self._tallies: list[_Tally] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        common: dict[str, Any] = {"namespace": namespace, "registry": self.registry}
        self._failed = Counter(
            "messages_failed",
            "Handler calls that raised (each try, instant retries included).",
            ["channel", "handler", "error_type"],
            **common,
        )
        self._retried = Counter(
            "messages_retried",
            "Messages sent back to their channel for a later try.",
            ["channel", "handler"],
            **common,
        )
        self._dead_letters = Counter(
            "messages_dead_lettered",
            "Messages moved to the dead letter store.",
            ["channel", "handler", "error_type"],
            **common,
        )
        self.registry.register(_Tallied(self, namespace))
        if depth:
            self.registry.register(_ChannelDepth(self, namespace))

    def attach(self, channels: Mapping[str, Channel]) -> None:
        self._channels = channels

    @contextmanager
    def sending(self, channel: str, envelope: Envelope) -> Iterator[Envelope]:
        yield envelope
        sent = self._tally().sent
        sent[channel] = sent.get(channel, 0) + 1

    def handling(self, invocation: Invocation) -> AbstractContextManager[None]:
        return _Handling(self, invocation)

    def _tally(self) -> _Tally:
        """This thread's counts: plain numbers, no lock, summed at each scrape."""
        tally: _Tally | None = getattr(self._local, "tally", None)
        if tally is None:
            tally = self._local.tally = _Tally()
            with self._lock:
                self._tallies.append(tally)
        return tally

    def tallies(self) -> list[_Tally]:
        with self._lock:
            return list(self._tallies)

    def failed(self, channel: str, handler: str, failure: BaseException) -> None:
        kind = type(failure)
        self._failed.labels(channel, handler, f"{kind.__module__}.{kind.__qualname__}").inc()

    def retried(self, delivery: Delivery, handler: str, error: BaseException) -> None:
        self._retried.labels(delivery.channel, handler).inc()

    def dead_lettered(self, letter: DeadLetter) -> None:
        self._dead_letters.labels(letter.channel, letter.handler or "", letter.error_type).inc()

    def asgi_app(self) -> Any:
        """An ASGI app that serves these metrics, to mount in a FastAPI or Starlette app."""
        return prometheus_client.make_asgi_app(self.registry)

    def wsgi_app(self) -> Any:
        """A WSGI app that serves these metrics, to mount in a Flask or Django app."""
        return prometheus_client.make_wsgi_app(self.registry)

    def serve(self, port: int, address: str = "127.0.0.1") -> Any:
        """Serve these metrics on ``address:port`` from a thread; returns the server."""
        server, _thread = prometheus_client.start_http_server(
            port, addr=address, registry=self.registry
        )
        return server

    def channels(self) -> Mapping[str, Channel]:
        return self._channels


class _Tally:
    """One thread's counts of sends, successes and handling times."""

    __slots__ = ("handled", "sent", "timings")

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}
        self.handled: dict[tuple[str, str], int] = {}
        self.timings: dict[tuple[str, str], list[float]] = {}
        """Per channel and handler: the sum of the times, then a count per bucket."""


class _Handling:
    """Times one handler call and counts how it ended, in the calling thread's tally."""

    __slots__ = ("invocation", "metrics", "started")

    def __init__(self, metrics: Metrics, invocation: Invocation) -> None:
        self.metrics = metrics
        self.invocation = invocation
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        elapsed = time.perf_counter() - self.started
        metrics = self.metrics
        delivery = self.invocation.delivery
        assert delivery is not None  # instruments see only a worker's calls
        key = (delivery.channel, self.invocation.handler.name)
        tally = metrics._tally()
        timing = tally.timings.get(key)
        if timing is None:
            timing = tally.timings[key] = [0.0] * (len(metrics._bounds) + 1)
        timing[0] += elapsed
        timing[1 + bisect.bisect_left(metrics._bounds, elapsed)] += 1
        if error is None:
            if not delivery.repeated:  # a redone batch's success is counted once
                tally.handled[key] = tally.handled.get(key, 0) + 1
            return
        failure = failure_of(error)
        if failure is not None:
            metrics.failed(*key, failure)


class _Tallied(Collector):
    """The sends, successes and handling times of every thread's tally, summed."""

    def __init__(self, metrics: Metrics, namespace: str) -> None:
        self._metrics = metrics
        self._namespace = namespace

    def collect(self) -> Iterator[Any]:
        sent: dict[str, int] = {}
        handled: dict[tuple[str, str], int] = {}
        timings: dict[tuple[str, str], list[float]] = {}
        for tally in self._metrics.tallies():
            for channel, count in tally.sent.copy().items():
                sent[channel] = sent.get(channel, 0) + count
            for key, count in tally.handled.copy().items():
                handled[key] = handled.get(key, 0) + count
            for key, timing in tally.timings.copy().items():
                total = timings.setdefault(key, [0.0] * len(timing))
                for index, value in enumerate(list(timing)):
                    total[index] += value
        name = self._namespace
        sends = CounterMetricFamily(
            f"{name}_messages_sent", "Messages sent to a channel.", labels=["channel"]
        )
        for channel, count in sent.items():
            sends.add_metric([channel], count)
        yield sends
        successes = CounterMetricFamily(
            f"{name}_messages_handled",
            "Handler calls that succeeded.",
            labels=["channel", "handler"],
        )
        for key, count in handled.items():
            successes.add_metric(list(key), count)
        yield successes
        times = HistogramMetricFamily(
            f"{name}_handling_seconds", "Time one handler call took.", labels=["channel", "handler"]
        )
        bounds = self._metrics._bounds
        for key, timing in timings.items():
            cumulative = list(itertools.accumulate(timing[1:]))
            buckets = [
                ("+Inf" if bound == math.inf else repr(float(bound)), count)
                for bound, count in zip(bounds, cumulative, strict=True)
            ]
            times.add_metric(list(key), buckets, sum_value=timing[0])
        yield times


class _ChannelDepth(Collector):
    """Each channel's depth and oldest message's age, read at each scrape."""

    def __init__(self, metrics: Metrics, namespace: str) -> None:
        self._metrics = metrics
        self._namespace = namespace

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            f"{self._namespace}_channel_depth",
            "Messages waiting in a channel (ready or delayed).",
            labels=["channel"],
        )
        age = GaugeMetricFamily(
            f"{self._namespace}_channel_oldest_age_seconds",
            "Age of a channel's oldest waiting message: an outbox relay's lag.",
            labels=["channel"],
        )
        for name, channel in self._metrics.channels().items():
            try:
                count = channel.depth()
                oldest = channel.oldest_age()
            except Exception:  # a channel that cannot answer now leaves no sample
                continue
            if count is not None:
                depth.add_metric([name], count)
            if oldest is not None:
                age.add_metric([name], oldest)
        yield depth
        yield age
