"""``Messaging(...)`` built in stages, each complete before the next: the handlers' registry,
their router, the runtime, the consumer, then the channels attached and the schedules
checked. Every problem found on the way is reported at the end, in one
``ConfigurationError``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from busway._internal.consuming import Consumer
from busway._internal.instruments import Instrument, Instruments
from busway._internal.late import Late
from busway._internal.outlet import Gateways
from busway._internal.preparation import Preparation
from busway._internal.registry import (
    HandlerDefinition,
    HandlerRegistry,
    Services,
    gateway_classes_in,
    routing_keys,
)
from busway._internal.router import Router
from busway._internal.runtime import Runtime
from busway.channels.base import Channel, ChannelContext
from busway.conversion import Conversion, Converter
from busway.errors import ConfigurationError
from busway.gateways import CommandBus, EventBus, Gateway, QueryBus
from busway.interceptors import Interceptor
from busway.message import Message
from busway.messaging._database import MessagingDatabase, Tables, database_extension, sql_channels
from busway.messaging._schedules import make_schedules
from busway.recovery import DeadLetterStore, InMemoryDeadLetterStore, RetryPolicy
from busway.schedules import Schedule


@dataclass(frozen=True, slots=True)
class Options:
    """What ``Messaging(...)`` was given, its iterables read once."""

    handlers: Sequence[Any]
    channels: Sequence[Channel]
    database: Any
    services: Mapping[type[Any], Any] | Iterable[Any] | None
    interceptors: Sequence[Interceptor]
    converters: Sequence[Converter]
    retry: RetryPolicy | None
    channel_retries: Mapping[str, RetryPolicy]
    command_failures: str | None
    deduplicate_by: str | Callable[[Message[Any]], str | None] | None
    deduplication: bool
    dead_letters: DeadLetterStore | None
    max_crashes: int | None
    gateways: Sequence[type[Gateway] | ModuleType]
    clock: Callable[[], float]
    auto_setup: bool
    instruments: Sequence[Instrument]
    schedules: Sequence[Schedule]


@dataclass(frozen=True, slots=True)
class Wiring:
    """An application's parts, each complete."""

    channels: dict[str, Channel]
    runtime: Runtime
    consumer: Consumer
    gateways: Gateways
    database: MessagingDatabase
    schedules: Any
    """The ``busway.sql.schedules.Schedules`` to fire; None without schedules."""


def wire(options: Options, module: Mapping[str, Any] | None) -> Wiring:
    """The parts of an application; ``module``: the namespace of the module building it at
    its top level, whose gateway classes are checked too."""
    problems: list[str] = []
    channels = _channels(options.channels, problems)
    extension = (
        database_extension(options.database, options.deduplication, options.deduplicate_by)
        if options.database is not None
        else None
    )
    problems += _max_crashes_problems(options.max_crashes)
    for name in [*options.channel_retries, *filter(None, [options.command_failures])]:
        if name not in channels:
            problems.append(unknown_channel(name, channels))

    late: Late[Runtime] = Late()
    gateways = Gateways(late, set(channels), routing_keys(options.handlers).get)
    gateway_problems: list[str] = []

    def gateway_for(cls: type[Gateway]) -> Gateway | None:
        gateway, found = gateways.bind(cls)
        gateway_problems.extend(found)
        return gateway

    conversion = Conversion(options.converters)
    registry = HandlerRegistry(
        Services(options.services),
        list(extension.providers) if extension else [],
        gateway_for,
        conversion,
        _interceptors(options.interceptors, extension),
    )
    registry.add_all(options.handlers)
    router = Router(registry.definitions)
    problems += registry.problems + router.problems
    problems += _handler_channel_problems(registry.definitions, channels)

    runtime, dead_letters = _runtime(options, router, conversion, channels, extension)
    late.give(runtime)
    # Each handler's chains, composed once the runtime is built.
    consumer = Consumer(runtime, options.channel_retries, options.max_crashes)
    built_in: tuple[type[Gateway], ...] = (CommandBus, EventBus, QueryBus)
    for cls in (*built_in, *_gateway_classes(options.gateways, module)):
        gateway_for(cls)
    problems += gateway_problems

    context = ChannelContext(
        clock=options.clock,
        database=extension.engine if extension else None,
        max_crashes=options.max_crashes,
        dead_letters=dead_letters,
    )
    for channel in channels.values():
        channel.attach(context)
        problems += channel.validate()
    database = MessagingDatabase(extension, channels, runtime.preparation)
    schedules, schedule_problems = make_schedules(
        options.schedules, database, gateways, runtime, options.clock
    )
    problems += schedule_problems
    if problems:
        raise ConfigurationError(list(dict.fromkeys(problems)))
    runtime.instruments.attach(channels)
    return Wiring(channels, runtime, consumer, gateways, database, schedules)


def _channels(channels: Iterable[Channel], problems: list[str]) -> dict[str, Channel]:
    named: dict[str, Channel] = {}
    for channel in channels:
        if channel.name in named:
            problems.append(
                f"two channels are named {channel.name!r}; give each channel its own name"
            )
        named[channel.name] = channel
    return named


def _interceptors(given: Sequence[Interceptor], extension: Any) -> list[Interceptor]:
    """The application's interceptors, then the database's (transactions, the inbox)."""
    interceptors = list(given)
    if extension is None:
        return interceptors
    extension.see_interceptors(interceptors)
    return [*interceptors, *extension.interceptors]


def _runtime(
    options: Options,
    router: Router,
    conversion: Conversion,
    channels: dict[str, Channel],
    extension: Any,
) -> tuple[Runtime, DeadLetterStore]:
    dead_letters = options.dead_letters
    if dead_letters is None:
        dead_letters = extension.dead_letters if extension else InMemoryDeadLetterStore()
    tables = Tables(
        extension,
        [channels[name] for name in sql_channels(channels)],
        schedules=bool(options.schedules),
    )
    preparation = Preparation(
        options.auto_setup,
        tables.setup if extension is not None or tables.channels else None,
        sql_channels(channels),
        channels,
    )
    runtime = Runtime(
        router,
        conversion,
        channels,
        options.clock,
        dead_letters,
        options.retry or RetryPolicy(),
        command_failures=options.command_failures,
        preparation=preparation,
        instruments=Instruments(options.instruments),
    )
    return runtime, dead_letters


def _handler_channel_problems(
    definitions: Iterable[HandlerDefinition], channels: Mapping[str, Channel]
) -> list[str]:
    return [
        f"handler {definition.name} is marked @asynchronous({name!r}), but no "
        f"channel is named {name!r}; add it to Messaging(channels=[...])"
        for definition in definitions
        for name in definition.info.channels
        if name not in channels
    ]


def _gateway_classes(
    gateways: Iterable[type[Gateway] | ModuleType], module: Mapping[str, Any] | None
) -> list[type[Gateway]]:
    classes: list[type[Gateway]] = []
    for entry in gateways:
        classes += gateway_classes_in(vars(entry)) if isinstance(entry, ModuleType) else [entry]
    if module is not None:
        classes += gateway_classes_in(module)
    return list(dict.fromkeys(classes))


def _max_crashes_problems(max_crashes: object) -> list[str]:
    """``max_crashes`` must let a fatal message's batch-mates live: a death in a batch counts
    against every message in it, once, and then each is handed out alone."""
    if max_crashes is None or (
        isinstance(max_crashes, int) and not isinstance(max_crashes, bool) and max_crashes >= 2
    ):
        return []
    return [
        f"max_crashes={max_crashes!r}: the number of worker deaths after which a message is "
        "dead-lettered must be a whole number of at least 2 (a death in a batch counts once "
        "against every message in it), or None to turn the crash-loop guard off"
    ]


def unknown_channel(name: str, channels: Mapping[str, Channel]) -> str:
    defined = ", ".join(sorted(channels)) or "none"
    return f"no channel is named {name!r} (defined: {defined}); check the name or add the channel"
