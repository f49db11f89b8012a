"""Finding the application's ``Messaging`` object from ``--app module:attribute``."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

from busway.errors import ConfigurationError
from busway.messaging import Messaging

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USAGE = 2


class ConfigError(click.ClickException):
    """A problem with ``--app`` or the application's configuration: exit code 2."""

    exit_code = EXIT_USAGE


def load_messaging(spec: str) -> Messaging:
    """Import ``module:attribute`` (from the current directory too); it must be a Messaging."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"--app {spec!r} must look like module:attribute, e.g. orders:messaging")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ConfigurationError as error:
        raise ConfigError(f"{module_name}: {error}") from None
    except ModuleNotFoundError as error:
        if error.name is None or not _is_prefix(error.name, module_name):
            raise
        raise ConfigError(
            f"--app {spec!r}: no module named {error.name!r} (searched the current directory "
            "and sys.path); check the module name"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"--app {spec!r}: {target.__name__!r} has no attribute {part!r}")
        target = getattr(target, part)
    if not isinstance(target, Messaging):
        raise ConfigError(
            f"--app {spec!r} is a {type(target).__name__}, not a busway Messaging; "
            "point it at the Messaging(...) object"
        )
    return target


@contextlib.contextmanager
def opened(spec: str) -> Iterator[Messaging]:
    """The application's Messaging, closed when the command is done."""
    messaging = load_messaging(spec)
    try:
        yield messaging
    except ConfigurationError as error:  # SetupRequired among them: one sentence, exit code 2
        raise ConfigError(str(error)) from None
    finally:
        messaging.close()


def app_option(command: F) -> F:
    """The ``--app`` option every command takes."""
    return click.option(
        "--app",
        "app",
        envvar="BUSWAY_APP",
        required=True,
        metavar="MODULE:ATTRIBUTE",
        help="The application's Messaging object, e.g. orders:messaging (env: BUSWAY_APP).",
    )(command)


def _is_prefix(missing: str, module_name: str) -> bool:
    return module_name == missing or module_name.startswith(missing + ".")
