import random
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from busway import (
    CommandBus,
    Headers,
    InMemoryChannel,
    Messaging,
    RetryPolicy,
    asynchronous,
    command_handler,
)
from busway.channels.base import Envelope


@dataclass
class PlaceOrder:
    order_id: str


@dataclass
class CancelOrder:
    order_id: str


@asynchronous("async")
class AsyncCommandBus(CommandBus):
    pass


# -- the policy's arithmetic ----------------------------------------------------------------


def test_base_delay_grows_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_delay=0.5, multiplier=3, max_delay=10)

    assert [policy.base_delay(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10, 10]


def test_jitter_moves_the_delay_within_its_fraction_either_way() -> None:
    policy = RetryPolicy(initial_delay=2, multiplier=2, max_delay=60, jitter=0.25)

    assert policy.delay(2, rand=lambda: 0.0) == pytest.approx(3.0)
    assert policy.delay(2, rand=lambda: 0.5) == pytest.approx(4.0)
    assert policy.delay(2, rand=lambda: 1.0) == pytest.approx(5.0)


def test_jitter_stays_in_bounds_with_real_randomness() -> None:
    policy = RetryPolicy(initial_delay=1, multiplier=2, max_delay=5, jitter=0.1)
    rng = random.Random(7)

    for retry in range(1, 10):
        base = policy.base_delay(retry)
        for _ in range(200):
            delay = policy.delay(retry, rand=rng.random)
            assert base * 0.9 <= delay <= base * 1.1
    assert policy.base_delay(9) == 5


def test_no_jitter_means_exact_delays() -> None:
    policy = RetryPolicy(initial_delay=1, jitter=0)

    assert [policy.delay(n) for n in (1, 2, 3)] == [1, 2, 4]


def test_should_retry_counts_attempts_and_error_types() -> None:
    policy = RetryPolicy(retries=2, retry_on=(ConnectionError,))

    assert policy.should_retry(1, ConnectionError())
    assert policy.should_retry(2, ConnectionResetError())
    assert not policy.should_retry(3, ConnectionError())
    assert not policy.should_retry(1, ValueError())


@pytest.mark.parametrize(
    "settings",
    [{"retries": -1}, {"initial_delay": -1}, {"max_delay": -1}, {"jitter": 1.5}, {"jitter": -0.1}],
)
def test_a_policy_with_impossible_settings_is_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**settings)


# -- retries through a channel --------------------------------------------------------------


class Flaky:
    def __init__(self, failures: int, error: type[Exception] = ConnectionError) -> None:
        self.failures = failures
        self.error = error
        self.attempts: list[int] = []
        self.handled: list[str] = []

    def handler(self) -> Any:
        @command_handler
        def place(command: PlaceOrder, headers: Headers) -> None:
            self.attempts.append(headers.attempt)
            if self.failures > 0:
                self.failures -= 1
                raise self.error(f"down ({self.failures} more)")
            self.handled.append(command.order_id)

        return place


def test_a_failing_handler_is_retried_after_the_back_off_until_it_succeeds(clock: Any) -> None:
    flaky = Flaky(failures=2)
    channel = InMemoryChannel("async")
    messaging = Messaging(
        handlers=[flaky.handler()],
        channels=[channel],
        retry=RetryPolicy(retries=3, initial_delay=10, multiplier=2, jitter=0),
        clock=clock,
    )
    messaging.gateway(AsyncCommandBus).send(PlaceOrder("o-1"))

    first = messaging.run("async")
    assert (first.handled, first.failed) == (1, 1)
    assert channel.depth() == 1

    clock.advance(9.9)
    assert messaging.run("async").handled == 0
    clock.advance(0.1)
    assert messaging.run("async").failed == 1

    clock.advance(19.9)
    assert messaging.run("async").handled == 0
    clock.advance(0.1)
    assert messaging.run("async").failed == 0

    assert flaky.attempts == [0, 1, 2]
    assert flaky.handled == ["o-1"]
    assert channel.depth() == 0
    assert messaging.dead_letters.list() == []


def test_an_error_not_worth_retrying_goes_straight_to_the_dead_letters(clock: Any) -> None:
    flaky = Flaky(failures=1, error=ValueError)
    messaging = Messaging(
        handlers=[flaky.handler()],
        channels=[InMemoryChannel("async")],
        retry=RetryPolicy(retries=3, retry_on=(ConnectionError,)),
        clock=clock,
    )
    messaging.gateway(AsyncCommandBus).send(PlaceOrder("o-1"))
    messaging.run("async")

    (letter,) = messaging.dead_letters.list()
    assert letter.attempts == 1
    assert letter.error_type == "builtins.ValueError"


def test_a_message_out_of_retries_is_kept_as_a_dead_letter(clock: Any) -> None:
    flaky = Flaky(failures=100)
    handler = flaky.handler()
    channel = InMemoryChannel("async")
    messaging = Messaging(
        handlers=[handler],
        channels=[channel],
        retry=RetryPolicy(retries=2, initial_delay=1, jitter=0),
        clock=clock,
    )
    messaging.gateway(AsyncCommandBus).send(PlaceOrder("o-1"), headers={"tenant": "acme"})
    start = clock.now
    for _ in range(4):
        messaging.run("async")
        clock.advance(60)

    assert flaky.attempts == [0, 1, 2]
    assert channel.depth() == 0
    (letter,) = messaging.dead_letters.list()
    assert letter.channel == "async"
    assert letter.handler == f"{__name__}.{handler.__qualname__}"
    assert letter.attempts == 3
    assert letter.error_type == "builtins.ConnectionError"
    assert letter.error_message == "down (97 more)"
    assert "ConnectionError: down (97 more)" in letter.traceback
    assert letter.headers["tenant"] == "acme"
    assert letter.message_id is not None
    assert uuid.UUID(letter.message_id).version == 7
    assert letter.body == b'{"order_id":"o-1"}'
    assert letter.failed_at == start + 2 * 60
    assert messaging.dead_letters.get(letter.id) == letter
    assert messaging.dead_letters.list(channel="async") == [letter]
    assert messaging.dead_letters.list(channel="other") == []
    assert messaging.dead_letters.list(handler=letter.handler) == [letter]


def test_a_dead_letter_replayed_is_handled_again(clock: Any) -> None:
    flaky = Flaky(failures=1)
    messaging = Messaging(
        handlers=[flaky.handler()],
        channels=[InMemoryChannel("async")],
        retry=RetryPolicy(retries=0),
        clock=clock,
    )
    messaging.gateway(AsyncCommandBus).send(PlaceOrder("o-1"))
    messaging.run("async")
    (letter,) = messaging.dead_letters.list()

    assert messaging.dead_letters.replay([letter.id, "no-such-letter"]) == 1
    assert messaging.dead_letters.list() == []
    assert messaging.run("async").failed == 0

    assert flaky.handled == ["o-1"]
    assert flaky.attempts == [0, 0]


def test_dead_letters_can_be_deleted(clock: Any) -> None:
    flaky = Flaky(failures=1)
    messaging = Messaging(
        handlers=[flaky.handler()],
        channels=[InMemoryChannel("async")],
        retry=RetryPolicy(retries=0),
        clock=clock,
    )
    messaging.gateway(AsyncCommandBus).send(PlaceOrder("o-1"))
    messaging.run("async")
    (letter,) = messaging.dead_letters.list()

    assert messaging.dead_letters.delete([letter.id]) == 1
    assert messaging.dead_letters.delete([letter.id]) == 0
    assert messaging.dead_letters.list() == []


async def test_retries_with_arun(clock: Any) -> None:
    flaky = Flaky(failures=1)
    messaging = Messaging(
        handlers=[flaky.handler()],
        channels=[InMemoryChannel("async")],
        retry=RetryPolicy(retries=1, initial_delay=3, jitter=0),
        clock=clock,
    )
    await messaging.gateway(AsyncCommandBus).asend(PlaceOrder("o-1"))

    assert (await messaging.arun("async")).failed == 1
    clock.advance(3)
    assert (await messaging.arun("async")).failed == 0
    assert flaky.attempts == [0, 1]


# -- malformed messages ---------------------------------------------------------------------


class Placed:
    def __init__(self) -> None:
        self.orders: list[str] = []

    def handler(self) -> Any:
        @command_handler
        def place(command: PlaceOrder) -> None:
            self.orders.append(command.order_id)

        return place


def _headers(**changes: Any) -> dict[str, Any]:
    headers = {
        "id": str(uuid.uuid4()),
        "correlation_id": "c",
        "timestamp": 0.0,
        "type": f"{__name__}.PlaceOrder",
        "content_type": "application/json",
        "busway.kind": "command",
    }
    headers.update(changes)
    return {key: value for key, value in headers.items() if value is not None}


@pytest.mark.parametrize(
    ("body", "headers", "error"),
    [
        (b"{not json", _headers(), "ConversionError"),
        (b'{"order_id": 5}', _headers(), "ConversionError"),
        (b'{"order_id": "x"}', _headers(type="shop.Unknown"), "MalformedMessageError"),
        (b'{"order_id": "x"}', _headers(**{"busway.kind": "gossip"}), "MalformedMessageError"),
        (b'{"order_id": "x"}', _headers(**{"busway.kind": None}), "MalformedMessageError"),
        (
            b'{"order_id": "x"}',
            _headers(**{"busway.handler": "gone.handler"}),
            "MalformedMessageError",
        ),
        (b'{"order_id": "x"}', _headers(**{"busway.slip": "nowhere"}), "MalformedMessageError"),
        (
            b'{"order_id": "x"}',
            _headers(**{"busway.route": "no.such.key"}),
            "NoHandlerError",
        ),
    ],
    ids=[
        "bad-json",
        "wrong-shape",
        "unknown-type",
        "unknown-kind",
        "no-kind",
        "unknown-handler",
        "unknown-next-channel",
        "unknown-route",
    ],
)
def test_a_malformed_message_is_dead_lettered_at_once_and_the_next_is_handled(
    clock: Any, body: bytes, headers: dict[str, Any], error: str
) -> None:
    placed = Placed()
    channel = InMemoryChannel("async")
    messaging = Messaging(
        handlers=[placed.handler()],
        channels=[channel],
        retry=RetryPolicy(retries=5),
        clock=clock,
    )
    channel.send(Envelope(body, headers))
    messaging.gateway(AsyncCommandBus).send(PlaceOrder("good"))

    result = messaging.run("async")

    assert (result.handled, result.failed) == (2, 1)
    assert placed.orders == ["good"]
    assert channel.depth() == 0
    (letter,) = messaging.dead_letters.list()
    assert letter.error_type.endswith(f".{error}")
    assert letter.attempts == 1
    assert letter.body == body
    assert letter.channel == "async"
    assert letter.message_id == headers["id"]
