"""Turning the ``handlers=[...]`` list into handler definitions, once, at start-up."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol, get_type_hints

from busway._internal.chain import Chain, refusals
from busway._internal.links import Chains
from busway.conversion import Conversion, type_name
from busway.gateways import BUILT_IN_BUSES, Gateway
from busway.handlers import HandlerMark, Kind, async_channels, handler_marks
from busway.interceptors import HandlerInfo, Interceptor, Invocation
from busway.message import Headers, Message, qualified_name
from busway.recovery import marked_policy
from busway.timeouts import marked_timeout

Resolver = Callable[[Invocation], Any]


class ParameterProvider(Protocol):
    """Supplies handler parameters of the types it knows, e.g. a database ``Session``."""

    def resolver_for(self, annotation: Any, handler: HandlerInfo) -> Resolver | None: ...


@dataclass(slots=True, eq=False)
class HandlerDefinition:
    info: HandlerInfo
    function: Callable[..., Any]
    resolvers: tuple[Resolver, ...]
    keyword_resolvers: tuple[tuple[str, Resolver], ...] = ()
    """Resolvers of keyword-only parameters, by parameter name."""
    chain: Chain = field(default_factory=lambda: Chain([]))
    """Its interceptors, those of ``Messaging(interceptors=...)`` that apply to it."""
    chains: Chains = field(init=False)
    """Its chains on each path, interceptors innermost, composed once the runtime is built
    (``busway._internal.consuming.Consumer``)."""

    @property
    def name(self) -> str:
        return self.info.name


def _headers(invocation: Invocation) -> Headers:
    return invocation.message.headers


def _message(invocation: Invocation) -> Message[Any]:
    return invocation.message


class Services:
    """User services, looked up by exact type first, then by ``isinstance``."""

    def __init__(self, services: Mapping[type[Any], Any] | Iterable[Any] | None) -> None:
        if services is None:
            self._by_type: dict[type[Any], Any] = {}
        elif isinstance(services, Mapping):
            self._by_type = dict(services)
        else:
            self._by_type = {type(service): service for service in services}

    def find(self, annotation: Any) -> tuple[bool, Any]:
        if annotation in self._by_type:
            return True, self._by_type[annotation]
        if isinstance(annotation, type):
            for service in self._by_type.values():
                if isinstance(service, annotation):
                    return True, service
        return False, None


class HandlerRegistry:
    """Collects handler definitions, each complete with its unique name and its chain of
    interceptors, and the problems found while building them."""

    def __init__(
        self,
        services: Services,
        providers: list[ParameterProvider],
        gateway_for: Callable[[type[Gateway]], Gateway | None],
        conversion: Conversion,
        interceptors: Iterable[Interceptor] = (),
    ) -> None:
        self.services = services
        self.providers = providers
        self.gateway_for = gateway_for
        self.conversion = conversion
        self.interceptors = list(interceptors)
        self.definitions: list[HandlerDefinition] = []
        self.problems: list[str] = []
        self._names: set[str] = set()
        self._chains: list[tuple[HandlerInfo, list[Interceptor]]] = []

    def add_all(self, entries: Iterable[Any]) -> None:
        """Define every handler of ``entries``; then note the interceptors that cannot run
        soundly around the handlers they apply to."""
        for entry in entries:
            self.add(entry)
        self.problems += refusals(self._chains)

    def add(self, entry: Any) -> None:
        if isinstance(entry, type):
            instance = self._construct(entry)
            if instance is not None:
                self._add_instance(instance)
        elif handler_marks(entry):
            for mark in handler_marks(entry):
                self._define(entry, mark)
        elif callable(entry) and not _has_marked_methods(type(entry)):
            self.problems.append(
                f"{_describe(entry)} is in handlers=[...] but has no @command_handler, "
                "@event_handler or @query_handler marker; add one"
            )
        else:
            self._add_instance(entry)

    def _add_instance(self, instance: Any) -> None:
        found = False
        for attribute in dir(type(instance)):
            raw = getattr(type(instance), attribute, None)
            for mark in handler_marks(raw):
                self._define(getattr(instance, attribute), mark)
                found = True
        if not found:
            self.problems.append(
                f"{type(instance).__qualname__} is in handlers=[...] but none of its methods "
                "has a @command_handler, @event_handler or @query_handler marker"
            )

    def _construct(self, cls: type[Any]) -> Any:
        try:
            hints = get_type_hints(cls.__init__)
        except Exception as error:
            self.problems.append(f"cannot read the type hints of {cls.__qualname__}: {error}")
            return None
        arguments: dict[str, Any] = {}
        for parameter in list(inspect.signature(cls).parameters.values()):
            annotation = hints.get(parameter.name)
            found, value = self.services.find(annotation)
            if not found and isinstance(annotation, type) and issubclass(annotation, Gateway):
                value, found = self.gateway_for(annotation), True
            if found:
                arguments[parameter.name] = value
            elif parameter.default is inspect.Parameter.empty:
                self.problems.append(
                    f"handler class {cls.__qualname__} needs {parameter.name!r} "
                    f"({_annotation_name(annotation)}) to be built; pass one in "
                    "Messaging(services=[...]) or pass an instance in handlers=[...]"
                )
                return None
        return cls(**arguments)

    def _define(self, function: Callable[..., Any], mark: HandlerMark) -> None:
        name = _handler_name(function)
        try:
            hints = get_type_hints(function)
        except Exception as error:
            self.problems.append(f"cannot read the type hints of handler {name}: {error}")
            return
        parameters = list(inspect.signature(function).parameters.values())
        if not parameters:
            self.problems.append(
                f"handler {name} takes no parameters; its first parameter receives the message"
            )
            return
        payload_type = hints.get(parameters[0].name)
        if payload_type is Any or payload_type is object:
            payload_type = None
        if mark.key is None and not isinstance(payload_type, type):
            self.problems.append(
                f"handler {name} has no class type hint on its first parameter "
                f"{parameters[0].name!r}; annotate it with the message class, or route it "
                f'by key: @{mark.kind.value}_handler("some.key")'
            )
            return
        if (
            isinstance(payload_type, type)
            and not self.conversion.supports(payload_type)
            # A base class stands for its subclasses: those are converted when sent.
            and not payload_type.__subclasses__()
        ):
            self.problems.append(
                f"handler {name} takes {type_name(payload_type)}, which busway cannot "
                "convert to JSON; make it a dataclass, a msgspec Struct or a pydantic model, "
                "or pass a Converter in Messaging(converters=[...])"
            )
        channels = async_channels(function)
        if channels and mark.kind is Kind.QUERY:
            self.problems.append(
                f"query handler {name} is marked @asynchronous, but a query's caller waits "
                "for its answer; remove the marker, or make it a command handler"
            )
        info = HandlerInfo(
            name=self._unique_name(name),
            kind=mark.kind,
            key=mark.key,
            payload_type=payload_type if isinstance(payload_type, type) else None,
            channels=channels,
            transactional=mark.transactional,
            is_coroutine=inspect.iscoroutinefunction(function),
            retry=marked_policy(function),
            timeout=marked_timeout(function),
        )
        positional: list[Resolver] = []
        keyword: list[tuple[str, Resolver]] = []
        for parameter in parameters[1:]:
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            resolver = self._resolver(info, parameter, hints.get(parameter.name))
            if resolver is None:
                continue  # a problem is noted; the handler still routes, so clashes show too
            if parameter.kind is parameter.KEYWORD_ONLY:
                keyword.append((parameter.name, resolver))
            else:
                positional.append(resolver)
        applying = [i for i in self.interceptors if i.applies_to(info)]
        self._chains.append((info, applying))
        chain = Chain(applying, info.is_coroutine)
        self.definitions.append(
            HandlerDefinition(info, function, tuple(positional), tuple(keyword), chain)
        )

    def _unique_name(self, name: str) -> str:
        """``name``, or, when another handler has it already, ``name#2``, ``name#3``..."""
        unique, suffix = name, 2
        while unique in self._names:
            unique, suffix = f"{name}#{suffix}", suffix + 1
        self._names.add(unique)
        return unique

    def _resolver(
        self, info: HandlerInfo, parameter: inspect.Parameter, annotation: Any
    ) -> Resolver | None:
        if annotation is Headers:
            return _headers
        if annotation is Message or getattr(annotation, "__origin__", None) is Message:
            return _message
        if isinstance(annotation, type) and issubclass(annotation, Gateway):
            gateway = self.gateway_for(annotation)
            return lambda _invocation: gateway
        for provider in self.providers:
            resolver = provider.resolver_for(annotation, info)
            if resolver is not None:
                return resolver
        found, service = self.services.find(annotation)
        if found:
            return lambda _invocation: service
        if parameter.default is not inspect.Parameter.empty:
            default = parameter.default
            return lambda _invocation: default
        self.problems.append(
            f"handler {info.name} asks for {parameter.name!r} ({_annotation_name(annotation)}), "
            "which busway cannot inject; pass one in Messaging(services=[...]), give the "
            "parameter a default, or ask for Headers, Message, a gateway class or a Session"
        )
        return None


def _has_marked_methods(cls: type[Any]) -> bool:
    return any(handler_marks(getattr(cls, name, None)) for name in dir(cls))


def _handler_name(function: Callable[..., Any]) -> str:
    return qualified_name(function)


def _describe(entry: Any) -> str:
    name = getattr(entry, "__qualname__", None)
    return str(name) if name else repr(entry)


def _annotation_name(annotation: Any) -> str:
    if annotation is None:
        return "no type hint"
    return getattr(annotation, "__qualname__", None) or repr(annotation)


def routing_keys(entries: Iterable[Any]) -> dict[str, Kind]:
    """The kind of every routing key the handlers declare, before any handler is built."""
    kinds: dict[str, Kind] = {}
    for entry in entries:
        if handler_marks(entry):
            functions: list[Any] = [entry]
        else:
            cls = entry if isinstance(entry, type) else type(entry)
            functions = [getattr(cls, name, None) for name in dir(cls)]
        for function in functions:
            for mark in handler_marks(function):
                if mark.key is not None:
                    kinds.setdefault(mark.key, mark.kind)
    return kinds


def gateway_classes_in(namespace: Mapping[str, Any]) -> list[type[Gateway]]:
    """The gateway classes a module defines or imports, the built-in buses left out."""
    return [
        value
        for value in namespace.values()
        if isinstance(value, type)
        and issubclass(value, Gateway)
        and value is not Gateway
        and value not in BUILT_IN_BUSES
    ]


def building_module(frame: FrameType | None) -> Mapping[str, Any] | None:
    """The namespace of the module whose top level is building the application, if one is.

    ``frame`` is the caller of ``Messaging(...)``; busway's own frames are looked past. A
    ``Messaging`` built inside a function (a factory, a test) belongs to no module this way.
    """
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("busway."):
        frame = frame.f_back
    if frame is None or frame.f_code.co_name != "<module>":
        return None
    return frame.f_globals
