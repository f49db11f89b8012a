"""Property: whatever arrives on a channel, the worker keeps going.

Malformed bodies and headers are put straight on a channel (an ``InMemoryChannel``, and a
``SqlChannel`` on SQLite), with odd but harmless headers mixed in, followed by a good message.
Whatever hypothesis makes of them: the run never raises, each malformed message is a dead
letter with its reason (once, without retries), each odd but well-formed one is handled once,
and the good message after them is handled.
"""

import asyncio
import itertools
from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from busway import (
    CommandBus,
    InMemoryChannel,
    Messaging,
    RetryPolicy,
    SqlChannel,
    asynchronous,
    command_handler,
)
from busway.channels.base import Envelope


@dataclass
class Order:
    id: str


ORDER_TYPE = f"{__name__}.Order"
HANDLER = f"{__name__}.Orders.take"


@asynchronous("jobs")
class OrderBus(CommandBus):
    pass


class Orders:
    def __init__(self) -> None:
        self.seen: list[str] = []

    @command_handler
    def take(self, order: Order) -> None:
        self.seen.append(order.id)


def is_order(body: bytes) -> bool:
    try:
        msgspec.json.decode(body, type=Order)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return True


MISSING = object()
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
missing_or_any = st.just(MISSING) | json_values


def not_a_number(value: object) -> bool:
    return value is MISSING or not isinstance(value, int | float)


def first_hop(value: object) -> object:
    return value.partition(",")[0] if isinstance(value, str) else None


# Each of these alone keeps a message from being handled.
FATAL = {
    "type": missing_or_any.filter(lambda value: value != ORDER_TYPE),
    "busway.kind": missing_or_any.filter(lambda value: value != "command"),
    "busway.handler": json_values.filter(lambda value: value is not None and value != HANDLER),
    "busway.slip": json_values.filter(lambda value: bool(value) and first_hop(value) != "jobs"),
    "busway.route": json_values.filter(lambda value: value is not None),
}
# None of these keeps a well-formed message from being handled, at once.
HARMLESS = {
    "id": st.just(MISSING),
    "correlation_id": missing_or_any,
    "causation_id": missing_or_any,
    "timestamp": missing_or_any,
    "content_type": missing_or_any,
    "busway.attempt": missing_or_any | st.sampled_from([-1, 2**31, 2**63 - 1]),
    "busway.retry": missing_or_any,
    "busway.deliver_at": missing_or_any.filter(lambda value: not_a_number(value) or value is True),
    "busway.expires_at": missing_or_any.filter(
        lambda value: not_a_number(value) and not isinstance(value, bool)
    ),
}
user_keys = st.text(max_size=8).filter(
    lambda key: (
        key not in FATAL
        and key not in HARMLESS
        and key not in ("probe", "type")
        and not key.startswith("busway.")
    )
)


@st.composite
def harmless_changes(draw):
    changes = draw(st.dictionaries(st.sampled_from(sorted(HARMLESS)), st.none(), max_size=4))
    for key in changes:
        changes[key] = draw(HARMLESS[key])
    changes.update(draw(st.dictionaries(user_keys, json_values, max_size=2)))
    return changes


def apply(headers, changes):
    for key, value in changes.items():
        if value is MISSING:
            headers.pop(key, None)
        else:
            headers[key] = value
    return headers


probes = itertools.count()


def base_headers():
    probe = f"p-{next(probes)}"
    headers = {
        "id": f"id-{probe}",
        "correlation_id": f"id-{probe}",
        "timestamp": 1_700_000_000.0,
        "type": ORDER_TYPE,
        "content_type": "application/json",
        "busway.kind": "command",
        "probe": probe,
    }
    return probe, headers


@st.composite
def malformed(draw):
    probe, headers = base_headers()
    body = msgspec.json.encode({"id": probe})
    fault = draw(st.sampled_from(["body-bytes", "body-json", *sorted(FATAL)]))
    if fault == "body-bytes":
        body = draw(st.binary(max_size=40).filter(lambda data: not is_order(data)))
    elif fault == "body-json":
        body = draw(json_values.map(msgspec.json.encode).filter(lambda data: not is_order(data)))
    else:
        apply(headers, {fault: draw(FATAL[fault])})
    apply(headers, draw(harmless_changes()))
    return probe, Envelope(body, headers)


@st.composite
def odd(draw):
    probe, headers = base_headers()
    apply(headers, draw(harmless_changes()))
    return probe, Envelope(msgspec.json.encode({"id": probe}), headers)


def build(kind, tmp_path):
    orders = Orders()
    options = {}
    if kind == "sql":
        options["database"] = f"sqlite:///{tmp_path / 'malformed.db'}"
    messaging = Messaging(
        handlers=[orders],
        channels=[SqlChannel("jobs") if kind == "sql" else InMemoryChannel("jobs")],
        retry=RetryPolicy(retries=3, instant_retries=2),  # none of it for malformed messages
        **options,
    )
    messaging.setup()
    return orders, messaging


@pytest.mark.parametrize("front", ["sync", "asyncio"])
@pytest.mark.parametrize("kind", ["memory", "sql"])
def test_malformed_messages_become_dead_letters_and_the_worker_goes_on(kind, front, tmp_path):
    orders, messaging = build(kind, tmp_path)
    loop = asyncio.new_event_loop()

    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(
        bad=st.lists(malformed(), min_size=1, max_size=3),
        fine=st.lists(odd(), max_size=2),
        order=st.randoms(use_true_random=False),
    )
    def check(bad, fine, order):
        arrivals = [*bad, *fine]
        order.shuffle(arrivals)
        for _, envelope in arrivals:
            messaging.channel("jobs").send(envelope)
        good = f"good-{next(probes)}"
        before = len(orders.seen)
        if front == "asyncio":
            loop.run_until_complete(messaging.gateway(OrderBus).asend(Order(good)))
            result = loop.run_until_complete(messaging.arun("jobs"))
        else:
            messaging.gateway(OrderBus).send(Order(good))
            result = messaging.run("jobs")

        assert (result.handled, result.failed) == (len(arrivals) + 1, len(bad))
        letters = {}
        for letter in messaging.dead_letters.list():
            letters.setdefault(letter.headers.get("probe"), []).append(letter)
        for probe, envelope in bad:
            (letter,) = letters.pop(probe)
            assert letter.error_type and letter.error_message, letter
            assert letter.attempts >= 1 and letter.body == envelope.body
            assert letter.channel == "jobs"
        assert not {probe for probe, _ in fine} & set(letters)
        assert sorted(orders.seen[before:]) == sorted([probe for probe, _ in fine] + [good])
        assert orders.seen[-1] == good  # sent last, handled last
        assert messaging.channel("jobs").depth() == 0
        messaging.dead_letters.delete([letter.id for letter in messaging.dead_letters.list()])

    try:
        check()
    finally:
        loop.run_until_complete(messaging.aclose())
        loop.close()
