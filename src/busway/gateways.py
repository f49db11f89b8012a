"""Gateways: interfaces whose method calls become messages.

``CommandBus``, ``EventBus`` and ``QueryBus`` are built in. A subclass is a new bus with its own
settings (``@asynchronous`` on it, for one). A business interface is a ``Gateway`` subclass
whose public methods each carry ``@route("key")``; busway writes their bodies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from busway.handlers import Kind
from busway.message import HeaderValue

if TYPE_CHECKING:
    from busway._internal.outlet import Outlet

UserHeaders = Mapping[str, HeaderValue] | None
Delay = float | timedelta | None
F = TypeVar("F", bound=Callable[..., Any])

ROUTE_MARK = "__busway_route__"


class Gateway:
    """Base of every gateway; ask ``messaging.gateway(Cls)`` or a handler parameter for one."""

    __slots__ = ("_outlet",)

    def __init__(self, outlet: Outlet) -> None:
        self._outlet = outlet

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} gateway>"


class CommandBus(Gateway):
    """Sends commands, each to its one handler."""

    __slots__ = ()

    def send(
        self,
        command: Any,
        headers: UserHeaders = None,
        *,
        delay: Delay = None,
        ttl: Delay = None,
        ordering_key: str | int | None = None,
        priority: int | None = None,
    ) -> Any:
        """Handle ``command`` now (returning what its handler returns), or queue it.

        ``ordering_key``: messages of one key are handled one at a time, in the order sent
        (``busway.ordering``); ``priority``: 0 to 9, higher first on a channel that keeps
        priorities."""
        return self._outlet.dispatch(
            Kind.COMMAND, command, None, headers, delay, ttl, None, ordering_key, priority
        )

    def send_with_routing(
        self,
        key: str,
        payload: Any = None,
        headers: UserHeaders = None,
        *,
        delay: Delay = None,
        ttl: Delay = None,
        ordering_key: str | int | None = None,
        priority: int | None = None,
    ) -> Any:
        """Send ``payload`` to the handler of routing key ``key``."""
        return self._outlet.dispatch(
            Kind.COMMAND, payload, key, headers, delay, ttl, None, ordering_key, priority
        )

    async def asend(
        self,
        command: Any,
        headers: UserHeaders = None,
        *,
        delay: Delay = None,
        ttl: Delay = None,
        ordering_key: str | int | None = None,
        priority: int | None = None,
    ) -> Any:
        """``send`` for asyncio code."""
        return await self._outlet.adispatch(
            Kind.COMMAND, command, None, headers, delay, ttl, None, ordering_key, priority
        )

    async def asend_with_routing(
        self,
        key: str,
        payload: Any = None,
        headers: UserHeaders = None,
        *,
        delay: Delay = None,
        ttl: Delay = None,
        ordering_key: str | int | None = None,
        priority: int | None = None,
    ) -> Any:
        """``send_with_routing`` for asyncio code."""
        return await self._outlet.adispatch(
            Kind.COMMAND, payload, key, headers, delay, ttl, None, ordering_key, priority
        )


class EventBus(Gateway):
    """Publishes events to every handler that subscribes to them."""

    __slots__ = ()

    def publish(
        self,
        event: Any,
        headers: UserHeaders = None,
        *,
        delay: Delay = None,
        ttl: Delay = None,
        ordering_key: str | int | None = None,
        priority: int | None = None,
    ) -> None:
        self._outlet.dispatch(
            Kind.EVENT, event, None, headers, delay, ttl, None, ordering_key, priority
        )

    def publish_with_routing(
        self,
        key: str,
        payload: Any = None,
        headers: UserHeaders = None,
        *,
        delay: Delay = None,
        ttl: Delay = None,
        ordering_key: str | int | None = None,
        priority: int | None = None,
    ) -> None:
        self._outlet.dispatch(
            Kind.EVENT, payload, key, headers, delay, ttl, None, ordering_key, priority
        )

    async def apublish(
        self,
        event: Any,
        headers: UserHeaders = None,
        *,
        delay: Delay = None,
        ttl: Delay = None,
        ordering_key: str | int | None = None,
        priority: int | None = None,
    ) -> None:
        await self._outlet.adispatch(
            Kind.EVENT, event, None, headers, delay, ttl, None, ordering_key, priority
        )

    async def apublish_with_routing(
        self,
        key: str,
        payload: Any = None,
        headers: UserHeaders = None,
        *,
        delay: Delay = None,
        ttl: Delay = None,
        ordering_key: str | int | None = None,
        priority: int | None = None,
    ) -> None:
        await self._outlet.adispatch(
            Kind.EVENT, payload, key, headers, delay, ttl, None, ordering_key, priority
        )


class QueryBus(Gateway):
    """Sends a query to its one handler and returns the answer."""

    __slots__ = ()

    def send(self, query: Any, headers: UserHeaders = None) -> Any:
        return self._outlet.dispatch(Kind.QUERY, query, None, headers)

    def send_with_routing(self, key: str, payload: Any = None, headers: UserHeaders = None) -> Any:
        return self._outlet.dispatch(Kind.QUERY, payload, key, headers)

    async def asend(self, query: Any, headers: UserHeaders = None) -> Any:
        return await self._outlet.adispatch(Kind.QUERY, query, None, headers)

    async def asend_with_routing(
        self, key: str, payload: Any = None, headers: UserHeaders = None
    ) -> Any:
        return await self._outlet.adispatch(Kind.QUERY, payload, key, headers)


BUILT_IN_BUSES: tuple[type[Gateway], ...] = (CommandBus, EventBus, QueryBus)


def route(
    key: str, *, kind: Literal["command", "event", "query"] | None = None
) -> Callable[[F], F]:
    """Map a business gateway method to a routing key.

    The method takes the payload (and optionally ``headers=``); its kind (command, event or
    query) is the kind of the handlers of ``key``, or ``kind=`` when no handler lives here.
    """

    def mark(method: F) -> F:
        setattr(method, ROUTE_MARK, (key, Kind(kind) if kind else None))
        return method

    return mark


def bus_kind(cls: type[Gateway]) -> Kind | None:
    """The kind of a built-in bus or a subclass of one; ``None`` for business interfaces."""
    if issubclass(cls, CommandBus):
        return Kind.COMMAND
    if issubclass(cls, EventBus):
        return Kind.EVENT
    if issubclass(cls, QueryBus):
        return Kind.QUERY
    return None
