"""Retry policies on real databases: back-off, exhaustion, layering, instant retries, retry_on."""

import textwrap
from dataclasses import dataclass

import msgspec
import pytest
from recovery_app import effects
from recovery_support import busway, effect_counts, environment, make_tables, waiting
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from busway import (
    CommandBus,
    Headers,
    InMemoryChannel,
    RetryPolicy,
    SqlChannel,
    asynchronous,
    command_handler,
    retry_policy,
)
from busway.testing import FakeClock, record


class Refused(Exception):
    pass


class Transient(Exception):
    pass


class Hiccup(Transient):
    pass


@dataclass
class Charge:
    id: str


@asynchronous("jobs")
class ChargeBus(CommandBus):
    pass


class Flaky:
    """Writes an effect row on every call; the first ``failures`` calls for a job then raise."""

    def __init__(self, failures: int = 0, error: type[Exception] = Refused) -> None:
        self.failures = failures
        self.error = error
        self.calls: dict[str, int] = {}
        self.attempts: list[int] = []

    @command_handler
    def charge(self, command: Charge, session: Session, headers: Headers) -> None:
        calls = self.calls[command.id] = self.calls.get(command.id, 0) + 1
        self.attempts.append(headers.attempt)
        session.execute(insert(effects).values(job=command.id, worker="flaky"))
        if calls <= self.failures and command.id != "steady":
            raise self.error(f"{command.id} refused on call {calls}")


@pytest.fixture
def tables(database_url):
    make_tables(database_url)


def next_due(messaging):
    """When the next message of any channel of ``messaging``'s database falls due, or None."""
    table = messaging.channel("jobs").table
    with messaging.database_engine.connect() as connection:
        due = connection.execute(select(func.min(table.c.available_at))).scalar()
    return None if due is None else due / 1000


def drain(messaging, clock, channels):
    """Run the channels, moving the clock to each retry's time, until nothing is left."""
    while True:
        messaging.run(channels)
        due = next_due(messaging)
        if due is None:
            return
        clock.advance(max(0.0, due - clock()))


# -- delayed retries -----------------------------------------------------------------------------


def test_retried_after_each_back_off_until_it_succeeds(make_messaging, database_url, tables):
    clock = FakeClock()
    flaky = Flaky(failures=3)
    policy = RetryPolicy(retries=3, initial_delay=2, multiplier=3, max_delay=100, jitter=0)
    messaging = make_messaging([flaky], [SqlChannel("jobs")], clock=clock, retry=policy)

    with record(messaging) as recorded:
        messaging.gateway(ChargeBus).send(Charge("c-1"))
        for retry, delay in enumerate([2, 6, 18], start=1):
            failed_at = clock()
            result = messaging.run("jobs")
            assert (result.handled, result.failed) == (1, 1)
            retried = recorded.envelopes("jobs")[-1]
            assert retried.headers["busway.attempt"] == retry
            assert retried.headers["busway.deliver_at"] == pytest.approx(failed_at + delay)
            assert messaging.channel("jobs").depth() == 1
            clock.advance(delay - 0.5)
            assert messaging.run("jobs").handled == 0  # not due yet
            clock.advance(0.5)
        result = messaging.run("jobs")

    assert (result.handled, result.failed) == (1, 0)
    assert flaky.attempts == [0, 1, 2, 3]
    assert effect_counts(database_url) == {"c-1": 1}  # the failed tries' writes rolled back
    assert messaging.channel("jobs").depth() == 0
    assert messaging.dead_letters.list() == []


def test_out_of_retries_the_message_is_a_dead_letter_with_its_error(
    make_messaging, database_url, tables
):
    clock = FakeClock()
    flaky = Flaky(failures=99)
    policy = RetryPolicy(retries=2, initial_delay=1, jitter=0)
    messaging = make_messaging([flaky], [SqlChannel("jobs")], clock=clock, retry=policy)
    with record(messaging) as recorded:
        messaging.gateway(ChargeBus).send(Charge("c-1"))
    message_id = recorded.messages()[0].headers.id

    drain(messaging, clock, "jobs")

    assert flaky.attempts == [0, 1, 2]
    (letter,) = messaging.dead_letters.list()
    assert letter.channel == "jobs"
    assert letter.handler == f"{__name__}.Flaky.charge"
    assert letter.error_type == f"{__name__}.Refused"
    assert letter.error_message == "c-1 refused on call 3"
    assert 'raise self.error(f"{command.id} refused on call {calls}")' in letter.traceback
    assert letter.traceback.rstrip().endswith("Refused: c-1 refused on call 3")
    assert letter.attempts == 3
    assert letter.message_id == message_id
    assert msgspec.json.decode(letter.body) == {"id": "c-1"}
    assert messaging.dead_letters.get(letter.id) == letter
    assert effect_counts(database_url) == {}
    assert messaging.channel("jobs").depth() == 0


def test_a_dead_letter_keeps_when_it_failed(make_messaging, database_url, tables):
    clock = FakeClock(1_700_000_003.125)
    messaging = make_messaging(
        [Flaky(failures=1)], [SqlChannel("jobs")], clock=clock, retry=RetryPolicy(retries=0)
    )
    messaging.gateway(ChargeBus).send(Charge("c-1"))
    messaging.run("jobs")

    (letter,) = messaging.dead_letters.list()
    assert letter.failed_at == pytest.approx(clock(), abs=0.001)


# -- which policy applies ------------------------------------------------------------------------


@dataclass
class ByHandler:
    id: str


@dataclass
class ByBus:
    id: str


@dataclass
class ByChannel:
    id: str


@dataclass
class ByDefault:
    id: str


@retry_policy(RetryPolicy(retries=2, initial_delay=10, jitter=0))
@asynchronous("jobs")
class PolicyBus(CommandBus):
    """Its messages carry its policy."""


@asynchronous("jobs")
class PlainBus(CommandBus):
    pass


@asynchronous("other")
class OtherBus(CommandBus):
    pass


class Layers:
    """Every handler fails, always; each notes when it was called."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: dict[str, list[float]] = {}

    def _fail(self, name: str) -> None:
        self.calls.setdefault(name, []).append(self.clock())
        raise Refused(name)

    @command_handler
    @retry_policy(RetryPolicy(retries=3, initial_delay=1, jitter=0))
    def by_handler(self, command: ByHandler) -> None:
        self._fail("handler")

    @command_handler
    def by_bus(self, command: ByBus) -> None:
        self._fail("bus")

    @command_handler
    def by_channel(self, command: ByChannel) -> None:
        self._fail("channel")

    @command_handler
    def by_default(self, command: ByDefault) -> None:
        self._fail("default")


def test_the_most_specific_policy_wins(make_messaging, tables):
    clock = FakeClock()
    layers = Layers(clock)
    messaging = make_messaging(
        [layers],
        [SqlChannel("jobs"), SqlChannel("other")],
        clock=clock,
        retry=RetryPolicy(retries=0),
        channel_retries={"jobs": RetryPolicy(retries=1, initial_delay=50, jitter=0)},
    )
    start = clock()
    # The handler's policy beats its bus's, the bus's beats the channel's, the channel's the
    # default: each message is sent where every less specific policy also applies.
    messaging.gateway(PolicyBus).send(ByHandler("h"))
    messaging.gateway(PolicyBus).send(ByBus("b"))
    messaging.gateway(PlainBus).send(ByChannel("c"))
    messaging.gateway(OtherBus).send(ByDefault("d"))

    drain(messaging, clock, ["jobs", "other"])

    offsets = {name: [at - start for at in calls] for name, calls in layers.calls.items()}
    assert offsets == {
        "handler": [0, 1, 3, 7],
        "bus": [0, 10, 30],
        "channel": [0, 50],
        "default": [0],
    }
    attempts = {letter.error_message: letter.attempts for letter in messaging.dead_letters.list()}
    assert attempts == {"handler": 4, "bus": 3, "channel": 2, "default": 1}


# -- instant retries -----------------------------------------------------------------------------


def channel_of(kind):
    if kind == "memory":
        return InMemoryChannel("jobs")
    if kind == "redo":
        return SqlChannel("jobs", redo_batches=True)
    return SqlChannel("jobs", mode=kind)


CHANNEL_KINDS = ["transaction", "redo", "lease", "memory"]


@pytest.mark.parametrize("kind", CHANNEL_KINDS)
def test_each_instant_retry_runs_in_a_fresh_transaction(make_messaging, database_url, tables, kind):
    flaky = Flaky(failures=2)
    policy = RetryPolicy(retries=0, instant_retries=2)
    messaging = make_messaging([flaky], [channel_of(kind)], retry=policy)
    bus = messaging.gateway(ChargeBus)
    bus.send(Charge("steady"))  # in the same batch, before the flaky one
    bus.send(Charge("c-1"))

    result = messaging.run("jobs")

    assert (result.handled, result.failed) == (2, 0)
    # With redo_batches, the failure rolls the batch back and redoes the handlers before it.
    assert flaky.calls == {"steady": 2 if kind == "redo" else 1, "c-1": 3}
    assert flaky.attempts == [0] * sum(flaky.calls.values())  # not delayed attempts
    assert effect_counts(database_url) == {"steady": 1, "c-1": 1}

    bus.send(Charge("c-2"))  # alone in its batch
    assert messaging.run("jobs").failed == 0
    assert flaky.calls["c-2"] == 3
    assert effect_counts(database_url) == {"steady": 1, "c-1": 1, "c-2": 1}
    assert messaging.dead_letters.list() == []
    assert messaging.channel("jobs").depth() == 0


@pytest.mark.parametrize("kind", ["transaction", "memory"])
def test_instant_retries_come_before_each_delayed_retry(make_messaging, database_url, tables, kind):
    clock = FakeClock()
    flaky = Flaky(failures=99)
    policy = RetryPolicy(retries=1, initial_delay=5, jitter=0, instant_retries=1)
    messaging = make_messaging([flaky], [channel_of(kind)], clock=clock, retry=policy)
    messaging.gateway(ChargeBus).send(Charge("c-1"))

    assert messaging.run("jobs").failed == 1
    assert flaky.attempts == [0, 0]
    clock.advance(5)
    assert messaging.run("jobs").failed == 1

    assert flaky.attempts == [0, 0, 1, 1]  # (1 + instant_retries) * (1 + retries) calls
    (letter,) = messaging.dead_letters.list()
    assert letter.attempts == 2  # deliveries: each delivery's instant retries count once
    assert letter.error_message == "c-1 refused on call 4"
    assert effect_counts(database_url) == {}


# -- which errors are retried --------------------------------------------------------------------


def transient_policy():
    return RetryPolicy(
        retries=3, initial_delay=1, jitter=0, instant_retries=1, retry_on=(Transient,)
    )


@retry_policy(transient_policy())
@asynchronous("jobs")
class TransientBus(CommandBus):
    pass


class Picky:
    """Raises the error its job's id names."""

    errors = {"hiccup": Hiccup, "bad": ValueError}

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    @command_handler
    def charge(self, command: Charge, session: Session) -> None:
        self.calls[command.id] = self.calls.get(command.id, 0) + 1
        session.execute(insert(effects).values(job=command.id, worker="picky"))
        raise self.errors[command.id](command.id)


class PickyWithPolicy(Picky):
    @command_handler
    @retry_policy(transient_policy())
    def charge(self, command: Charge, session: Session) -> None:
        super().charge(command, session)


@pytest.mark.parametrize("declared", ["messaging", "bus", "handler"])
def test_retry_on_limits_which_errors_are_retried(make_messaging, database_url, tables, declared):
    clock = FakeClock()
    handler = PickyWithPolicy() if declared == "handler" else Picky()
    options = {"retry": transient_policy()} if declared == "messaging" else {}
    messaging = make_messaging([handler], [SqlChannel("jobs")], clock=clock, **options)
    bus = messaging.gateway(TransientBus if declared == "bus" else ChargeBus)
    bus.send(Charge("hiccup"))
    bus.send(Charge("bad"))

    assert messaging.run("jobs").failed == 2

    # A subclass of a retry_on type is retried, at once and later; anything else not at all.
    assert handler.calls == {"hiccup": 2, "bad": 1}
    (retry,) = waiting(database_url)
    assert msgspec.json.decode(retry.body) == {"id": "hiccup"}
    assert retry.headers["busway.attempt"] == 1
    (letter,) = messaging.dead_letters.list()
    assert (letter.error_type, letter.error_message, letter.attempts) == (
        "builtins.ValueError",
        "bad",
        1,
    )
    assert effect_counts(database_url) == {}


# -- the policy each handler follows, from the command line -------------------------------------

APP = """
from dataclasses import dataclass

from busway import (
    CommandBus, Messaging, RetryPolicy, SqlChannel, asynchronous, command_handler, retry_policy,
)


@dataclass
class Pay:
    id: str


@dataclass
class Ship:
    id: str


@command_handler
@retry_policy(
    RetryPolicy(
        retries=4, initial_delay=0.5, multiplier=2, jitter=0.2, instant_retries=2,
        retry_on=(TimeoutError, ConnectionError),
    )
)
def pay(command: Pay) -> None:
    pass


@asynchronous("jobs")
@command_handler
def ship(command: Ship) -> None:
    pass


messaging = Messaging(
    handlers=[pay, ship],
    channels=[SqlChannel("jobs"), SqlChannel("other")],
    database="sqlite:///app.db",
    retry=RetryPolicy(retries=1, initial_delay=3, jitter=0),
    channel_retries={"jobs": RetryPolicy(retries=2, initial_delay=7, multiplier=1, jitter=0)},
)
"""


def policies(output):
    lines = output.splitlines()
    assert lines[0].split() == ["HANDLER", "KIND", "TAKES", "CHANNELS", "RETRY", "POLICY"]
    return {line.split()[0]: line.split(None, 4)[4] for line in lines[1:]}


def test_busway_handlers_prints_the_policy_each_handler_follows(tmp_path):
    (tmp_path / "payments.py").write_text(textwrap.dedent(APP))
    env = environment()

    anywhere = busway(tmp_path, env, "handlers", "--app", "payments:messaging")
    on_jobs = busway(tmp_path, env, "handlers", "--app", "payments:messaging", "--channel", "jobs")

    assert anywhere.returncode == 0, anywhere.stderr
    own = "2 instant, 4 delayed (0.5s, 1s, 2s, 4s, jitter 20%), on TimeoutError, ConnectionError"
    assert policies(anywhere.stdout) == {
        "payments.pay": own,
        "payments.ship": "0 instant, 1 delayed (3s, jitter 0%), on Exception",
    }
    assert on_jobs.returncode == 0, on_jobs.stderr
    assert policies(on_jobs.stdout) == {
        "payments.pay": own,
        "payments.ship": "0 instant, 2 delayed (7s, 7s, jitter 0%), on Exception",
    }
