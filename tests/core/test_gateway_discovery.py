"""Which gateway classes ``Messaging(...)`` checks at start-up besides those it is given."""

from __future__ import annotations

import runpy
import sys
import textwrap
import types
from pathlib import Path

import pytest

from busway import ConfigurationError

BUSES = """
from busway import CommandBus, EventBus, asynchronous


@asynchronous("asnyc")
class AsyncCommandBus(CommandBus):
    pass


@asynchronous("async")
class AsyncEventBus(EventBus):
    pass
"""

TYPO = "is marked @asynchronous('asnyc'), but no channel is named 'asnyc'"


def run_module(directory: Path, source: str) -> dict[str, object]:
    """Run ``source`` as the top level of a module, as importing an application does."""
    path = directory / "application.py"
    path.write_text(textwrap.dedent(source))
    return runpy.run_path(str(path), run_name="application")


def test_a_typo_on_a_bus_the_building_module_defines_fails_at_start_up(tmp_path: Path) -> None:
    source = BUSES + textwrap.dedent(
        """
        from busway import InMemoryChannel, Messaging, command_handler


        class Mailer:
            pass


        @command_handler
        def greet(name: str, mailer: Mailer) -> None:
            pass


        messaging = Messaging(handlers=[greet], channels=[InMemoryChannel("async")])
        """
    )

    with pytest.raises(ConfigurationError) as error:
        run_module(tmp_path, source)

    problems = error.value.problems
    assert len(problems) == 2, problems  # reported with the application's other problems
    assert any(
        problem.startswith("gateway AsyncCommandBus ")
        and TYPO in problem
        and problem.endswith("add it to Messaging(channels=[...]) (defined: async)")
        for problem in problems
    ), problems
    assert any("mailer" in problem for problem in problems)


def test_a_typo_on_a_bus_the_building_module_imports_fails_at_start_up(tmp_path: Path) -> None:
    buses = types.ModuleType("application_buses")
    exec(compile(textwrap.dedent(BUSES), "application_buses", "exec"), vars(buses))
    source = """
        from busway import InMemoryChannel, Messaging

        AsyncCommandBus = BUSES.AsyncCommandBus

        messaging = Messaging(channels=[InMemoryChannel("async")])
    """.replace("BUSES", "__import__('sys').modules['application_buses']")
    sys.modules["application_buses"] = buses
    try:
        with pytest.raises(ConfigurationError) as error:
            run_module(tmp_path, source)
    finally:
        del sys.modules["application_buses"]

    assert len(error.value.problems) == 1
    assert TYPO in str(error.value)


def test_a_module_in_gateways_has_each_of_its_gateway_classes_checked() -> None:
    from busway import InMemoryChannel, Messaging

    buses = types.ModuleType("application_buses")
    exec(compile(textwrap.dedent(BUSES), "application_buses", "exec"), vars(buses))

    with pytest.raises(ConfigurationError) as error:
        Messaging(channels=[InMemoryChannel("async")], gateways=[buses])

    assert len(error.value.problems) == 1
    assert TYPO in str(error.value)


def test_a_messaging_built_in_a_function_leaves_other_applications_buses_alone(
    tmp_path: Path,
) -> None:
    """One module, two applications, each built by a factory: neither rejects the other's bus
    (a test module building many applications is one such module)."""
    source = BUSES + textwrap.dedent(
        """
        from busway import InMemoryChannel, Messaging


        def typo_free_app():
            return Messaging(channels=[InMemoryChannel("async")])


        def other_app():
            return Messaging(channels=[InMemoryChannel("elsewhere")])


        apps = [typo_free_app(), other_app()]
        """
    )

    namespace = run_module(tmp_path, source)

    assert len(namespace["apps"]) == 2  # type: ignore[arg-type]


def test_a_bus_asked_for_later_names_its_fix(tmp_path: Path) -> None:
    source = BUSES + textwrap.dedent(
        """
        from busway import InMemoryChannel, Messaging


        def build():
            return Messaging(channels=[InMemoryChannel("async")])
        """
    )
    namespace = run_module(tmp_path, source)
    messaging = namespace["build"]()  # type: ignore[operator]

    with pytest.raises(ConfigurationError, match="add it to Messaging"):
        messaging.gateway(namespace["AsyncCommandBus"])
    with pytest.raises(TypeError, match="pass CommandBus, EventBus, QueryBus"):
        messaging.gateway(Path)
