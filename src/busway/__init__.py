"""busway: command, event and query buses where one marker makes a whole bus asynchronous."""

from importlib.metadata import PackageNotFoundError, version

from busway._internal.instruments import Instrument
from busway.channels.base import Channel
from busway.channels.memory import InMemoryChannel
from busway.conversion import Converter, named
from busway.errors import (
    BuswayError,
    ConfigurationError,
    ConversionError,
    HandlerTimeout,
    NoHandlerError,
    SetupRequired,
)
from busway.gateways import CommandBus, EventBus, Gateway, QueryBus, route
from busway.handlers import asynchronous, command_handler, event_handler, query_handler
from busway.interceptors import HandlerInfo, Interceptor, Invocation
from busway.liveness import ChannelHealth, Health, WorkerRecord
from busway.message import Headers, Message
from busway.messaging import Messaging
from busway.ordering import ordered_by, priority
from busway.recovery import DeadLetter, RetryPolicy, retry_policy
from busway.sql.channel import SqlChannel
from busway.timeouts import handler_timeout
from busway.worker import RunResult

try:
    __version__ = version("busway")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BuswayError",
    "Channel",
    "ChannelHealth",
    "CommandBus",
    "ConfigurationError",
    "ConversionError",
    "Converter",
    "DeadLetter",
    "EventBus",
    "Gateway",
    "HandlerInfo",
    "HandlerTimeout",
    "Headers",
    "Health",
    "InMemoryChannel",
    "Instrument",
    "Interceptor",
    "Invocation",
    "Message",
    "Messaging",
    "NoHandlerError",
    "QueryBus",
    "RetryPolicy",
    "RunResult",
    "SetupRequired",
    "SqlChannel",
    "WorkerRecord",
    "__version__",
    "asynchronous",
    "command_handler",
    "event_handler",
    "handler_timeout",
    "named",
    "ordered_by",
    "priority",
    "query_handler",
    "retry_policy",
    "route",
]
