"""Binding gateway classes to the runtime: one ``Outlet`` per gateway class, one instance of
each class per application (``Gateways``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from busway._internal._async.dispatching import AsyncDispatch
from busway._internal._sync.dispatching import Dispatch
from busway._internal.late import Late
from busway._internal.runtime import Runtime
from busway.errors import ConfigurationError
from busway.gateways import BUILT_IN_BUSES, ROUTE_MARK, Gateway, QueryBus, bus_kind
from busway.handlers import Kind, async_channels
from busway.message import HeaderValue


class Outlet(Dispatch, AsyncDispatch):
    """Where a gateway's calls go: straight to dispatch, or to its channels."""

    __slots__ = ()


class Gateways:
    """The gateways of one application, each class bound at its first request.

    Handler classes ask for theirs while the handlers are defined, before the router and
    the runtime exist: each gateway reaches the runtime through ``runtime``, given once the
    runtime is built.
    """

    def __init__(
        self,
        runtime: Late[Runtime],
        known_channels: set[str],
        kind_of_key: Callable[[str], Kind | None],
    ) -> None:
        self._runtime = runtime
        self._known_channels = known_channels
        self._kind_of_key = kind_of_key
        self._bound: dict[type[Gateway], Gateway] = {}

    def bind(self, cls: type[Gateway]) -> tuple[Gateway | None, list[str]]:
        """The instance of ``cls``, or the problems that prevent it."""
        gateway = self._bound.get(cls)
        if gateway is not None:
            return gateway, []
        gateway, problems = bind_gateway(
            cls, self._runtime, self._known_channels, self._kind_of_key
        )
        if gateway is not None:
            self._bound[cls] = gateway
        return gateway, problems

    def get(self, cls: type[Gateway]) -> Gateway:
        """The instance of ``cls``; a ``ConfigurationError`` if it cannot be bound."""
        gateway = self._bound.get(cls)
        if gateway is None:
            if not (isinstance(cls, type) and issubclass(cls, Gateway)):
                raise TypeError(
                    f"{cls!r} is not a Gateway subclass; pass CommandBus, EventBus, QueryBus, "
                    "or a class that subclasses one of them or Gateway"
                )
            gateway, problems = self.bind(cls)
            if gateway is None:
                raise ConfigurationError(problems)
        return gateway


def bind_gateway(
    cls: type[Gateway],
    runtime: Late[Runtime],
    known_channels: set[str],
    kind_of_key: Callable[[str], Kind | None],
) -> tuple[Gateway | None, list[str]]:
    """An instance of ``cls`` wired to ``runtime``, or the problems that prevent it."""
    problems: list[str] = []
    name = cls.__qualname__
    channels = async_channels(cls)
    problems += _unknown_channels(f"gateway {name}", channels, known_channels)
    if channels and issubclass(cls, QueryBus):
        problems.append(
            f"query bus {name} is marked @asynchronous, but a query's caller waits for its "
            "answer; remove the marker, or send a command and publish the result as an event"
        )
    implementation: type[Gateway] = cls
    if bus_kind(cls) is None:
        methods, method_problems = _business_methods(cls, known_channels, kind_of_key)
        problems += method_problems
        implementation = type(cls.__name__, (cls,), {"__slots__": (), **methods})
        implementation.__qualname__ = cls.__qualname__
        implementation.__module__ = cls.__module__
    if problems:
        return None, problems
    return implementation(Outlet(runtime, cls, channels)), []


def _business_methods(
    cls: type[Gateway], known_channels: set[str], kind_of_key: Callable[[str], Kind | None]
) -> tuple[dict[str, Callable[..., Any]], list[str]]:
    methods: dict[str, Callable[..., Any]] = {}
    problems: list[str] = []
    for klass in cls.__mro__:
        if klass in (Gateway, object, *BUILT_IN_BUSES):
            continue
        for attribute, member in vars(klass).items():
            if attribute.startswith("_") or not inspect.isfunction(member):
                continue
            if attribute in methods:
                continue
            where = f"{cls.__qualname__}.{attribute}"
            mark = getattr(member, ROUTE_MARK, None)
            if mark is None:
                problems.append(
                    f'gateway method {where} has no route; mark it @route("some.key"), '
                    "or rename it with a leading underscore if it is a helper"
                )
                continue
            key, kind = mark
            kind = kind or kind_of_key(key)
            if kind is None:
                problems.append(
                    f"gateway method {where} routes to {key!r}, which no handler takes; add "
                    f'a handler for {key!r}, or say @route({key!r}, kind="command") if '
                    "another application handles it"
                )
                continue
            method_channels = async_channels(member) or async_channels(cls)
            problems += _unknown_channels(
                f"gateway method {where}", method_channels, known_channels
            )
            if method_channels and kind is Kind.QUERY:
                problems.append(
                    f"gateway method {where} sends query {key!r} through a channel, but a "
                    "query's caller waits for its answer; remove @asynchronous from it"
                )
            methods[attribute] = _implement(
                key, kind, async_channels(member) or None, inspect.iscoroutinefunction(member)
            )
    return methods, problems


def _implement(
    key: str, kind: Kind, channels: tuple[str, ...] | None, is_async: bool
) -> Callable[..., Any]:
    if is_async:

        async def asend(
            self: Gateway, payload: Any = None, headers: Mapping[str, HeaderValue] | None = None
        ) -> Any:
            return await self._outlet.adispatch(kind, payload, key, headers, None, None, channels)

        return asend

    def send(
        self: Gateway, payload: Any = None, headers: Mapping[str, HeaderValue] | None = None
    ) -> Any:
        return self._outlet.dispatch(kind, payload, key, headers, None, None, channels)

    return send


def _unknown_channels(what: str, channels: tuple[str, ...], known_channels: set[str]) -> list[str]:
    return [
        f"{what} is marked @asynchronous({channel!r}), but no channel is named {channel!r}; "
        f"add it to Messaging(channels=[...])"
        + (f" (defined: {', '.join(sorted(known_channels))})" if known_channels else "")
        for channel in channels
        if channel not in known_channels
    ]
