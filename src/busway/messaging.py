"""``Messaging``: the one object an application configures, validated once at start-up."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    nullcontext,
)
from datetime import timedelta
from types import ModuleType
from typing import Any, TypeVar

from busway._internal.consuming import Consumer
from busway._internal.dead_letters import DeadLetters
from busway._internal.instruments import Instrument, Instruments
from busway._internal.outlet import bind_gateway
from busway._internal.preparation import Preparation
from busway._internal.registry import (
    HandlerRegistry,
    ParameterProvider,
    Services,
    building_module,
    gateway_classes_in,
    routing_keys,
)
from busway._internal.router import Router
from busway._internal.runtime import Runtime
from busway._internal.workers import Workers
from busway.channels.base import Channel, ChannelContext
from busway.conversion import Conversion, Converter
from busway.errors import ConfigurationError, NoHandlerError, UnknownChannelError
from busway.gateways import CommandBus, EventBus, Gateway, QueryBus
from busway.handlers import Kind
from busway.interceptors import HandlerInfo, Interceptor
from busway.liveness import Health, HeartbeatStore, InMemoryHeartbeatStore, WorkerRecord
from busway.message import Message
from busway.recovery import (
    DeadLetterStore,
    InMemoryDeadLetterStore,
    RetryPolicy,
    most_specific_policy,
)
from busway.schedules import SCHEDULE, TICK, Schedule
from busway.timeouts import seconds_of
from busway.worker import (
    HEARTBEAT_INTERVAL,
    Heartbeats,
    Limits,
    RunResult,
    Worker,
    graceful_signals,
)

log = logging.getLogger("busway")

G = TypeVar("G", bound=Gateway)


class Messaging:
    """Handlers, channels and gateways wired together.

    Every configuration problem found here is reported at once, in one ``ConfigurationError``.
    The gateway classes checked here: the built-in buses, those in ``gateways=[...]`` (a class,
    or a module for every gateway class it defines or imports), those handlers ask for, and,
    when ``Messaging(...)`` is built at the top level of a module, every gateway class that
    module defines or imports above it. Any other is checked when first asked for.

    With ``auto_setup`` (the default), busway's tables and the channels' queues and streams
    are created at their first use; without, a missing one raises ``SetupRequired``.
    """

    def __init__(
        self,
        handlers: Iterable[Any] = (),
        channels: Iterable[Channel] = (),
        database: Any = None,
        services: Mapping[type[Any], Any] | Iterable[Any] | None = None,
        *,
        interceptors: Iterable[Interceptor] = (),
        converters: Sequence[Converter] = (),
        retry: RetryPolicy | None = None,
        channel_retries: Mapping[str, RetryPolicy] | None = None,
        command_failures: str | None = None,
        deduplicate_by: str | Callable[[Message[Any]], str | None] | None = None,
        deduplication: bool = True,
        dead_letters: DeadLetterStore | None = None,
        max_crashes: int | None = 3,
        gateways: Iterable[type[Gateway] | ModuleType] = (),
        clock: Callable[[], float] = time.time,
        auto_setup: bool = True,
        instruments: Iterable[Instrument] = (),
        schedules: Iterable[Schedule] = (),
    ) -> None:
        problems: list[str] = []
        handlers = list(handlers)
        self.clock = clock
        self.channels: dict[str, Channel] = {}
        for channel in channels:
            if channel.name in self.channels:
                problems.append(
                    f"two channels are named {channel.name!r}; give each channel its own name"
                )
            self.channels[channel.name] = channel

        self.database = database
        extension = (
            _database_extension(database, deduplication, deduplicate_by)
            if database is not None
            else None
        )
        providers: list[ParameterProvider] = list(extension.providers) if extension else []
        interceptors = list(interceptors)
        if extension is not None:
            extension.see_interceptors(interceptors)
        all_interceptors = [*interceptors, *(extension.interceptors if extension else ())]
        if dead_letters is None:
            dead_letters = extension.dead_letters if extension else InMemoryDeadLetterStore()

        conversion = Conversion(converters)
        self._extension = extension
        self.auto_setup = auto_setup
        sql_channels = self._sql_channels()
        preparation = Preparation(
            auto_setup,
            self._setup_sql_tables if extension is not None or sql_channels else None,
            sql_channels,
            self.channels,
        )
        self._runtime = Runtime(
            Router([]),
            conversion,
            self.channels,
            clock,
            dead_letters,
            retry or RetryPolicy(),
            command_failures=command_failures,
            preparation=preparation,
            instruments=Instruments(instruments),
        )
        problems += _max_crashes_problems(max_crashes)
        for name in [*(channel_retries or {}), *([command_failures] if command_failures else [])]:
            if name not in self.channels:
                problems.append(_unknown_channel(name, self.channels))
        self._key_kinds = routing_keys(handlers)
        self._gateways: dict[type[Gateway], Gateway] = {}
        self._gateway_problems: list[str] = []

        registry = HandlerRegistry(
            Services(services), providers, self._bind_or_note, conversion, all_interceptors
        )
        registry.add_all(handlers)
        router = Router(registry.definitions)
        self._runtime.router = router
        # Each handler's chains, composed once its interceptors are known.
        self._consumer = Consumer(self._runtime, channel_retries or {}, max_crashes)
        problems += registry.problems + router.problems
        for definition in registry.definitions:
            for name in definition.info.channels:
                if name not in self.channels:
                    problems.append(
                        f"handler {definition.name} is marked @asynchronous({name!r}), but no "
                        f"channel is named {name!r}; add it to Messaging(channels=[...])"
                    )
        built_in: tuple[type[Gateway], ...] = (CommandBus, EventBus, QueryBus)
        for cls in (*built_in, *_gateway_classes(gateways, building_module(sys._getframe(1)))):
            self._bind_or_note(cls)
        problems += self._gateway_problems

        context = ChannelContext(
            clock=clock,
            database=extension.engine if extension else None,
            max_crashes=max_crashes,
            dead_letters=dead_letters,
        )
        for channel in self.channels.values():
            channel.attach(context)
            problems += channel.validate()
        self._schedules, schedule_problems = self._make_schedules(list(schedules))
        problems += schedule_problems
        if problems:
            raise ConfigurationError(_unique(problems))
        self._runtime.instruments.attach(self.channels)
        self.dead_letters = DeadLetters(self._runtime)

    # -- gateways --------------------------------------------------------------------------

    def _bind_or_note(self, cls: type[Gateway]) -> Gateway | None:
        gateway = self._gateways.get(cls)
        if gateway is None:
            gateway, problems = bind_gateway(
                cls, self._runtime, set(self.channels), self._key_kinds.get
            )
            if gateway is None:
                self._gateway_problems += problems
            else:
                self._gateways[cls] = gateway
        return gateway

    def gateway(self, cls: type[G]) -> G:
        """The implementation of gateway class ``cls``; asking is all the registration needed."""
        gateway = self._gateways.get(cls)
        if gateway is None:
            if not (isinstance(cls, type) and issubclass(cls, Gateway)):
                raise TypeError(
                    f"{cls!r} is not a Gateway subclass; pass CommandBus, EventBus, QueryBus, "
                    "or a class that subclasses one of them or Gateway"
                )
            self._gateway_problems = []
            gateway = self._bind_or_note(cls)
            if gateway is None:
                raise ConfigurationError(self._gateway_problems)
        return gateway  # type: ignore[return-value]

    @property
    def command_bus(self) -> CommandBus:
        return self.gateway(CommandBus)

    @property
    def event_bus(self) -> EventBus:
        return self.gateway(EventBus)

    @property
    def query_bus(self) -> QueryBus:
        return self.gateway(QueryBus)

    # -- channels and workers --------------------------------------------------------------

    def channel(self, name: str) -> Channel:
        try:
            return self.channels[name]
        except KeyError:
            raise UnknownChannelError(_unknown_channel(name, self.channels)) from None

    def setup(self) -> None:
        """Create every channel's tables, queues or streams (and busway's own tables)."""
        if self._extension is not None:
            self._extension.setup()
        for channel in self.channels.values():
            channel.setup()
        if self._schedules is not None:
            self._schedules.setup()
        self._runtime.preparation.done()

    async def asetup(self) -> None:
        if self._extension is not None:
            await self._extension.asetup()
        for channel in self.channels.values():
            await channel.asetup()
        self._runtime.preparation.done()

    def _sql_channels(self) -> set[str]:
        return {name for name, channel in self.channels.items() if callable(_ddl(channel))}

    def _setup_sql_tables(self) -> None:
        """busway's own tables and every SQL channel's: what ``auto_setup`` creates at once."""
        if self._extension is not None:
            self._extension.setup()
        for name in self._sql_channels():
            self.channels[name].setup()
        if self._schedules is not None:
            self._schedules.setup()

    def worker(
        self,
        channels: str | Sequence[str],
        *,
        limit: int | None = None,
        time_limit: float | None = None,
        until_empty: bool = True,
        memory_limit: int | None = None,
        stop_on_failure: bool = False,
        poll_interval: float = 1.0,
        on_progress: Callable[[RunResult], None] | None = None,
        handler_timeout: float | timedelta | None = None,
        heartbeat_interval: float | None = HEARTBEAT_INTERVAL,
    ) -> Worker:
        """A worker for ``channels``, to ``run()`` or ``arun()``. It beats every
        ``heartbeat_interval`` seconds into ``heartbeats`` while it runs (None: never)."""
        names = [channels] if isinstance(channels, str) else list(channels)
        for name in names:
            self.channel(name)
        limits = Limits(
            limit=limit,
            time_limit=time_limit,
            memory_limit=memory_limit,
            until_empty=until_empty,
            stop_on_failure=stop_on_failure,
            poll_interval=poll_interval,
            handler_timeout=None if handler_timeout is None else seconds_of(handler_timeout),
        )
        beats = None
        if heartbeat_interval is not None and not heartbeat_interval > 0:
            raise ConfigurationError(
                f"heartbeat_interval={heartbeat_interval!r}: a worker's heartbeat interval "
                "must be a positive number of seconds, or None for no heartbeat"
            )
        if heartbeat_interval is not None:
            beats = Heartbeats(
                self.heartbeats,
                heartbeat_interval,
                self.clock,
                self._runtime.preparation.dispatching,
            )
        return Worker(self._consumer, names, limits, on_progress, beats)

    def run(
        self,
        channels: str | Sequence[str],
        *,
        limit: int | None = None,
        time_limit: float | None = None,
        until_empty: bool = True,
        memory_limit: int | None = None,
        stop_on_failure: bool = False,
        concurrency: int = 1,
        handler_timeout: float | timedelta | None = None,
        shutdown_timeout: float | None = None,
    ) -> RunResult:
        """Consume ``channels`` until empty (by default), a limit, or SIGTERM/SIGINT.

        ``handler_timeout`` is the time limit of a handling whose handler and bus set none
        (``@handler_timeout``); past it, the handling fails with ``HandlerTimeout``. After
        SIGTERM or SIGINT, a second signal or ``shutdown_timeout`` seconds end the process
        in the middle of its handler, its messages unacknowledged (exit code 3).
        """
        worker = self.worker(
            channels,
            limit=limit,
            time_limit=time_limit,
            until_empty=until_empty,
            memory_limit=memory_limit,
            stop_on_failure=stop_on_failure,
            handler_timeout=handler_timeout,
        )
        with graceful_signals(worker, shutdown_timeout=shutdown_timeout), self.scheduling():
            return worker.run(concurrency)

    async def arun(
        self,
        channels: str | Sequence[str],
        *,
        limit: int | None = None,
        time_limit: float | None = None,
        until_empty: bool = True,
        memory_limit: int | None = None,
        stop_on_failure: bool = False,
        concurrency: int = 1,
        handler_timeout: float | timedelta | None = None,
        shutdown_timeout: float | None = None,
    ) -> RunResult:
        """``run`` for asyncio code: handlers run on this event loop."""
        worker = self.worker(
            channels,
            limit=limit,
            time_limit=time_limit,
            until_empty=until_empty,
            memory_limit=memory_limit,
            stop_on_failure=stop_on_failure,
            handler_timeout=handler_timeout,
        )
        with (
            graceful_signals(worker, asyncio.get_running_loop(), shutdown_timeout),
            self.scheduling(),
        ):
            return await worker.arun(concurrency)

    # -- schedules -------------------------------------------------------------------------

    def _make_schedules(self, schedules: list[Schedule]) -> tuple[Any, list[str]]:
        if not schedules:
            return None, []
        problems = [problem for schedule in schedules for problem in schedule.problems()]
        names = [schedule.name for schedule in schedules]
        problems += [
            f"two schedules are named {name!r}; give each schedule its own name"
            for name in sorted({n for n in names if names.count(n) > 1})
        ]
        problems += [
            problem for schedule in schedules for problem in self._route_problems(schedule)
        ]
        if self._extension is None:
            problems.append(
                "schedules need Messaging(database=...): the database records each tick, so "
                "that it is sent once however many workers run"
            )
            return None, problems
        from busway.sql.schedules import Schedules

        made = Schedules(
            self._extension.database, schedules, self.transaction, self._send_tick, self.clock
        )
        return made, problems

    def _route_problems(self, schedule: Schedule) -> list[str]:
        """Why ``schedule``'s messages could not be sent, found now rather than at a tick."""
        where = f"schedule {schedule.name!r}"
        if schedule.via is not None:
            if not (isinstance(schedule.via, type) and issubclass(schedule.via, Gateway)):
                return [f"{where} has via={schedule.via!r}; give a CommandBus or EventBus class"]
            known = len(self._gateway_problems)
            self._bind_or_note(schedule.via)
            return self._gateway_problems[known:]
        payload = schedule.message
        if schedule.kind != "command" or (callable(payload) and not isinstance(payload, type)):
            return []  # events need no subscriber; a made payload's type is known at its tick
        try:
            self._runtime.targets(Kind.COMMAND, type(payload), None)
        except NoHandlerError as error:
            return [f"{where} sends a command nobody handles: {error}"]
        return []

    def _send_tick(self, schedule: Schedule, tick: float) -> None:
        headers = {**schedule.headers, SCHEDULE: schedule.name, TICK: schedule.tick_id(tick)}
        payload = schedule.payload(tick)
        if schedule.via is not None:
            gateway: Any = self.gateway(schedule.via)
            if isinstance(gateway, EventBus):
                gateway.publish(payload, headers=headers)
            else:
                gateway.send(payload, headers=headers)
        elif schedule.kind == "event":
            self.event_bus.publish(payload, headers=headers)
        else:
            self.command_bus.send(payload, headers=headers)

    def scheduling(self) -> AbstractContextManager[Any]:
        """A block during which this process fires the schedules, from a thread (``run``,
        ``arun`` and ``busway run`` open one around their worker); nothing without schedules."""
        if self._schedules is None:
            return nullcontext()
        from busway.sql.schedules import Scheduler

        if self.auto_setup:
            self._schedules.setup()
        return Scheduler(self._schedules)

    @property
    def schedule_definitions(self) -> tuple[Schedule, ...]:
        """The schedules given to ``Messaging(schedules=...)``."""
        return () if self._schedules is None else self._schedules.schedules

    def schedules(self) -> list[Any]:
        """Each schedule's last and next tick (``ScheduleState``), as ``busway schedules``
        lists them."""
        if self._schedules is None:
            return []
        if self.auto_setup:
            self._schedules.setup()
        return list(self._schedules.states())

    def setup_sql(self) -> list[str]:
        """The DDL ``setup`` runs on SQL databases, for migrations kept by hand or Alembic."""
        statements: list[str] = list(self._extension.ddl()) if self._extension else []
        for channel in self.channels.values():
            ddl = _ddl(channel)
            if callable(ddl):
                statements += [s for s in ddl() if s not in statements]
        return statements

    def transaction(self, session: Any = None) -> AbstractContextManager[Any]:
        """A transaction that outbox channels join; yields its SQLAlchemy ``Session``.

        With ``session``, messages sent inside the block join that session's transaction and
        commit when its owner commits. Without, a new transaction on the messaging database
        opens, and commits when the block ends without an error.
        """
        from busway.sql._sync.scopes import transaction_scope

        database = self._require_database("transaction()")
        self._runtime.preparation.dispatching()  # before the transaction: it holds SQLite's lock
        return transaction_scope(database, session)

    def atransaction(self, session: Any = None) -> AbstractAsyncContextManager[Any]:
        """``transaction`` for asyncio code: takes and yields an ``AsyncSession``."""
        from busway.sql._async.scopes import atransaction_scope

        scope = atransaction_scope(self._require_database("atransaction()"), session)
        return _after(self._runtime.preparation.adispatching, scope)

    @property
    def database_engine(self) -> Any:
        """The SQLAlchemy ``Engine`` of ``Messaging(database=...)``."""
        return self._require_database("database_engine").engine

    @property
    def async_database_engine(self) -> Any:
        """The SQLAlchemy ``AsyncEngine`` of ``Messaging(database=...)``."""
        return self._require_database("async_database_engine").async_engine

    def _require_database(self, what: str) -> Any:
        if self._extension is None:
            raise ConfigurationError(
                f"messaging.{what} needs a database; pass Messaging(database=...)"
            )
        return self._extension.database

    def close(self) -> None:
        """Release every connection; ``aclose`` also releases those made by asyncio code."""
        for channel in self.channels.values():
            channel.close()
        if self._extension is not None:
            self._extension.close()

    async def aclose(self) -> None:
        """Release every connection, on the event loop that made the asyncio ones."""
        for channel in self.channels.values():
            await channel.aclose()
        if self._extension is not None:
            await self._extension.aclose()

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @property
    def handlers(self) -> list[HandlerInfo]:
        """Every handler, as interceptors see it."""
        return [definition.info for definition in self._runtime.router.by_name.values()]

    def retry_policy_for(self, handler: HandlerInfo, channel: str | None = None) -> RetryPolicy:
        """The policy a failure of ``handler`` on ``channel`` follows (a bus's own policy,
        carried by its messages, comes between the handler's and the channel's)."""
        return most_specific_policy(
            self._runtime.retry,
            handler.retry,
            channel=self._consumer.channel_retries.get(channel) if channel else None,
        )

    def cleanup_inbox(self, older_than: float) -> int:
        """Forget deduplication records older than ``older_than`` seconds; how many went.

        A message delivered again after its record is gone takes effect again: keep records
        longer than any redelivery can take (the default retention of ``busway inbox cleanup``
        is seven days).
        """
        self._require_database("cleanup_inbox()")
        assert self._extension is not None
        self._runtime.preparation.sql()
        return int(self._extension.inbox.cleanup(older_than))

    # -- live workers and health ------------------------------------------------------------

    @functools.cached_property
    def heartbeats(self) -> HeartbeatStore:
        """Where running workers record their heartbeats: the ``busway_workers`` table of
        the database, or, without one, this process's memory (its own workers only)."""
        if self._extension is not None:
            store: HeartbeatStore = self._extension.heartbeats
            return store
        return InMemoryHeartbeatStore()

    @functools.cached_property
    def _workers(self) -> Workers:
        return Workers(self._runtime, self.heartbeats)

    def workers(self, silent_after: float | None = None) -> list[WorkerRecord]:
        """The running workers, by their last heartbeat, oldest start first.

        A worker is silent (``alive`` is false) once its last beat is older than
        ``silent_after`` seconds, by default three of its own beat intervals: it died
        without stopping (a SIGKILL, a lost host), or its whole process is frozen. The beat
        comes from a thread of its own: a handler that hangs shows as a count that no longer
        grows, not as silence.
        """
        return self._workers.list(silent_after)

    def forget_workers(self, silent_for: float) -> int:
        """Forget the workers silent for more than ``silent_for`` seconds; how many."""
        return self._workers.forget(silent_for)

    def health(
        self,
        max_age: float = 60.0,
        channels: Iterable[str] | None = None,
        silent_after: float | None = None,
    ) -> Health:
        """Whether messages flow on ``channels`` (all by default): each must have no
        message older than ``max_age`` seconds, and a live worker consuming it. For a
        readiness probe: ``messaging.health().ok``, and ``.problems`` says what is wrong.
        """
        names = list(self.channels) if channels is None else list(channels)
        for name in names:
            self.channel(name)
        return self._workers.health(max_age, names, silent_after)


def _database_extension(
    database: Any,
    deduplication: bool,
    deduplicate_by: str | Callable[[Message[Any]], str | None] | None,
) -> Any:
    from busway.sql.extension import SqlExtension

    return SqlExtension.from_database(database, deduplication, deduplicate_by)


def _gateway_classes(
    gateways: Iterable[type[Gateway] | ModuleType], module: Mapping[str, Any] | None
) -> list[type[Gateway]]:
    classes: list[type[Gateway]] = []
    for entry in gateways:
        classes += gateway_classes_in(vars(entry)) if isinstance(entry, ModuleType) else [entry]
    if module is not None:
        classes += gateway_classes_in(module)
    return list(dict.fromkeys(classes))


def _ddl(channel: Channel) -> Any:
    return getattr(channel, "ddl", None)


@asynccontextmanager
async def _after(
    prepare: Callable[[], Awaitable[None]], scope: AbstractAsyncContextManager[Any]
) -> AsyncIterator[Any]:
    await prepare()
    async with scope as value:
        yield value


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


def _unknown_channel(name: str, channels: Mapping[str, Channel]) -> str:
    defined = ", ".join(sorted(channels)) or "none"
    return f"no channel is named {name!r} (defined: {defined}); check the name or add the channel"


def _unique(problems: list[str]) -> list[str]:
    return list(dict.fromkeys(problems))
