"""``Messaging``: the one object an application configures, validated once at start-up."""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from datetime import timedelta
from types import ModuleType
from typing import Any, TypeVar

from busway._internal.dead_letters import DeadLetters
from busway._internal.instruments import Instrument
from busway._internal.registry import building_module
from busway._internal.runtime import Runtime
from busway._internal.workers import Workers
from busway.channels.base import Channel
from busway.conversion import Converter
from busway.errors import ConfigurationError, UnknownChannelError
from busway.gateways import CommandBus, EventBus, Gateway, QueryBus
from busway.interceptors import HandlerInfo, Interceptor
from busway.liveness import Health, HeartbeatStore, InMemoryHeartbeatStore, WorkerRecord
from busway.message import Message
from busway.messaging._wiring import Options, unknown_channel, wire
from busway.recovery import DeadLetterStore, RetryPolicy, most_specific_policy
from busway.schedules import Schedule
from busway.timeouts import seconds_of
from busway.worker import (
    HEARTBEAT_INTERVAL,
    Heartbeats,
    Limits,
    RunResult,
    Worker,
    graceful_signals,
)

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
        options = Options(
            handlers=list(handlers),
            channels=list(channels),
            database=database,
            services=services,
            interceptors=list(interceptors),
            converters=converters,
            retry=retry,
            channel_retries=dict(channel_retries or {}),
            command_failures=command_failures,
            deduplicate_by=deduplicate_by,
            deduplication=deduplication,
            dead_letters=dead_letters,
            max_crashes=max_crashes,
            gateways=list(gateways),
            clock=clock,
            auto_setup=auto_setup,
            instruments=list(instruments),
            schedules=list(schedules),
        )
        wiring = wire(options, building_module(sys._getframe(1)))
        self.clock = clock
        self.channels = wiring.channels
        self.database = database
        self.auto_setup = auto_setup
        self._runtime = wiring.runtime
        self._consumer = wiring.consumer
        self._gateways = wiring.gateways
        self._database = wiring.database
        self._extension = wiring.database.extension
        self._schedules = wiring.schedules
        self.dead_letters = DeadLetters(self._runtime)

    # -- gateways --------------------------------------------------------------------------

    def gateway(self, cls: type[G]) -> G:
        """The implementation of gateway class ``cls``; asking is all the registration needed."""
        return self._gateways.get(cls)  # type: ignore[return-value]

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
            raise UnknownChannelError(unknown_channel(name, self.channels)) from None

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
        return self._database.ddl()

    def transaction(self, session: Any = None) -> AbstractContextManager[Any]:
        """A transaction that outbox channels join; yields its SQLAlchemy ``Session``.

        With ``session``, messages sent inside the block join that session's transaction and
        commit when its owner commits. Without, a new transaction on the messaging database
        opens, and commits when the block ends without an error.
        """
        return self._database.transaction(session)

    def atransaction(self, session: Any = None) -> AbstractAsyncContextManager[Any]:
        """``transaction`` for asyncio code: takes and yields an ``AsyncSession``."""
        return self._database.atransaction(session)

    @property
    def database_engine(self) -> Any:
        """The SQLAlchemy ``Engine`` of ``Messaging(database=...)``."""
        return self._database.require("database_engine").engine

    @property
    def async_database_engine(self) -> Any:
        """The SQLAlchemy ``AsyncEngine`` of ``Messaging(database=...)``."""
        return self._database.require("async_database_engine").async_engine

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
        return self._database.cleanup_inbox(older_than)

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
