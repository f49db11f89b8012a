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

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from busway._internal.instruments import Instrument, failure_of
from busway.channels.base import Channel, Delivery, Envelope
from busway.errors import extra_required
from busway.interceptors import Invocation
from busway.recovery import DeadLetter

with extra_required("busway.metrics", "prometheus"):
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import GaugeMetricFamily
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
        self._series: dict[tuple[str, str], tuple[Any, Any]] = {}
        """The handled counter and the timing histogram of each channel and handler."""
        common: dict[str, Any] = {"namespace": namespace, "registry": self.registry}
        self._sent = Counter("messages_sent", "Messages sent to a channel.", ["channel"], **common)
        self._handled = Counter(
            "messages_handled",
            "Handler calls that succeeded.",
            ["channel", "handler"],
            **common,
        )
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
        self._handling_time = Histogram(
            "handling_seconds",
            "Time one handler call took.",
            ["channel", "handler"],
            buckets=tuple(buckets),
            **common,
        )
        if depth:
            self.registry.register(_ChannelDepth(self, namespace))

    def attach(self, channels: Mapping[str, Channel]) -> None:
        self._channels = channels

    @contextmanager
    def sending(self, channel: str, envelope: Envelope) -> Iterator[Envelope]:
        yield envelope
        self._sent.labels(channel).inc()

    @contextmanager
    def handling(self, invocation: Invocation) -> Iterator[None]:
        assert invocation.delivery is not None  # instruments see only a worker's calls
        key = (invocation.delivery.channel, invocation.handler.name)
        series = self._series.get(key) or self._new_series(key)
        started = time.perf_counter()
        try:
            yield
        except BaseException as error:
            failure = failure_of(error)
            if failure is not None:
                kind = type(failure)
                self._failed.labels(*key, f"{kind.__module__}.{kind.__qualname__}").inc()
            raise
        else:
            if not invocation.delivery.repeated:  # a redone batch's success is counted once
                series[0].inc()
        finally:
            series[1].observe(time.perf_counter() - started)

    def _new_series(self, key: tuple[str, str]) -> tuple[Any, Any]:
        series = (self._handled.labels(*key), self._handling_time.labels(*key))
        self._series[key] = series
        return series

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
