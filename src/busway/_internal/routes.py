"""A gateway's routes, looked up once per kind of message it sends."""

from __future__ import annotations

from typing import Any

from busway._internal.late import Late
from busway._internal.runtime import Route, Runtime
from busway.gateways import Gateway
from busway.handlers import Kind
from busway.ordering import marked_priority
from busway.recovery import marked_policy
from busway.timeouts import marked_timeout

RouteKey = tuple[Kind, type[Any], str | None, tuple[str, ...] | None]
"""A message's kind, payload type and routing key, and the channels a method sends it to."""


class Routes:
    """A gateway's routes: for each kind, payload type, routing key and channels of the
    messages it sends, the ``Route`` the runtime gave at the first of them. The runtime is
    late: handler classes are built with their gateways before the runtime exists."""

    __slots__ = ("_late", "_routes", "channels", "gateway", "priority", "retry", "timeout")

    def __init__(self, runtime: Late[Runtime], gateway: type[Gateway], channels: tuple[str, ...]):
        self._late = runtime
        self.gateway = gateway
        self.channels = channels
        self.retry = marked_policy(gateway)
        self.timeout = marked_timeout(gateway)
        self.priority = marked_priority(gateway)
        self._routes: dict[RouteKey, Route] = {}

    @property
    def runtime(self) -> Runtime:
        return self._late.get()

    def _route(self, route_key: RouteKey) -> Route:
        kind, payload_type, key, channels = route_key
        route = self.runtime.route(
            kind,
            payload_type,
            key,
            self.channels if channels is None else channels,
            self.retry,
            self.timeout,
            self.priority,
        )
        self._routes[route_key] = route
        return route
