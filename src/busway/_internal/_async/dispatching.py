"""What a gateway's call does: make the message, then call its one handler at once, or carry
out its steps (handlers to call, each through its chain, and channels to send it to)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from busway._internal.links import Handling
from busway._internal.routes import Routes
from busway._internal.runtime import Enqueue
from busway.handlers import Kind
from busway.message import HeaderValue


class AsyncDispatch(Routes):
    __slots__ = ()

    async def adispatch(
        self,
        kind: Kind,
        payload: Any,
        key: str | None,
        headers: Mapping[str, HeaderValue] | None,
        delay: float | timedelta | None = None,
        ttl: float | timedelta | None = None,
        channels: tuple[str, ...] | None = None,
        ordering_key: Any = None,
        priority: int | None = None,
    ) -> Any:
        route_key = (kind, type(payload), key, channels)
        route = self._routes.get(route_key) or self._route(route_key)
        runtime = self.runtime
        await runtime.preparation.adispatching()
        if ordering_key is None and route.ordering is not None:
            ordering_key = route.ordering(payload)
        message = runtime.routed_message(
            route.headers, payload, headers, delay, ttl, ordering_key, priority
        )
        for observer in runtime.observers:
            observer.sent(self.gateway, message)
        if route.direct is not None:
            return await runtime.ainvoke(route.direct, message)
        result = None
        for step in route.steps:
            if isinstance(step, Enqueue):
                await runtime.asend(step.channel, runtime.envelope(message, step.headers))
                continue
            result = await step.definition.chains.asend.ainvoke(Handling(step.definition, message))
        return result
