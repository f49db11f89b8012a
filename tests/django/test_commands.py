"""``manage.py busway ...``, the checks of settings.BUSWAY, and the extra being optional."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import override_settings
from djtest.messaging import OrderPlaced, OutboxBus, Record, WorkBus, messaging_for
from djtest.models import Counter, Delivered, Effect

from busway import ConfigurationError, Messaging
from busway.django.messaging import checked_messaging, get_messaging
from busway.django.settings import BuswaySettings, configured

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture
def busway_on(alias):
    with override_settings(BUSWAY={"MESSAGING": f"djtest.messaging:{alias}", "DATABASE": alias}):
        yield


def test_setup_creates_the_tables_of_the_project_messaging(alias, messaging, busway_on, capsys):
    call_command("busway", "setup")
    assert "set up outbox, work" in capsys.readouterr().out

    call_command("busway", "setup", "--sql")
    assert "CREATE TABLE IF NOT EXISTS busway_dj_messages" in capsys.readouterr().out


def test_channels_lists_depths(alias, messaging, busway_on, capsys):
    with transaction.atomic(using=alias):
        messaging.gateway(OutboxBus).publish(OrderPlaced("c-1"))
        messaging.gateway(OutboxBus).publish(OrderPlaced("c-2"))
    call_command("busway", "channels")
    lines = capsys.readouterr().out.splitlines()
    outbox = next(line.split() for line in lines if line.startswith("outbox"))
    assert outbox[:3] == ["outbox", "SqlChannel", "2"]


def test_run_consumes_with_the_orm_handlers(alias, messaging, busway_on):
    Counter.objects.using(alias).create(worker="test")
    with transaction.atomic(using=alias):
        for key in range(3):
            messaging.gateway(WorkBus).send(Record(key))
    call_command("busway", "run", "work", "--until-empty")
    assert sorted(Effect.objects.using(alias).values_list("key", flat=True)) == [0, 1, 2]
    assert messaging.channel("work").depth() == 0


def test_dead_letters_are_listed_and_replayed(alias, messaging, busway_on, capsys):
    Counter.objects.using(alias).create(worker="test")
    Delivered.objects.using(alias).create(number="d-1")  # the handler fails on it
    messaging.gateway(OutboxBus).publish(OrderPlaced("d-1"))
    messaging.run("outbox")
    assert len(messaging.dead_letters.list()) == 1

    call_command("busway", "dead-letter", "list")
    assert "IntegrityError" in capsys.readouterr().out

    Delivered.objects.using(alias).all().delete()
    call_command("busway", "dead-letter", "replay", "--all")
    capsys.readouterr()
    assert messaging.run("outbox").handled == 1
    assert messaging.dead_letters.list() == []
    assert Delivered.objects.using(alias).filter(number="d-1").exists()


def test_a_usage_error_is_a_command_error_with_its_exit_code(messaging, alias, busway_on):
    with pytest.raises(CommandError) as error:
        call_command("busway", "run", "no-such-channel")
    assert "no channel is named 'no-such-channel'" in str(error.value)
    assert error.value.returncode == 2


def test_get_messaging_is_the_one_settings_name():
    assert get_messaging() is checked_messaging(configured())


@pytest.mark.parametrize(
    ("busway", "problem"),
    [
        (None, "settings.BUSWAY is missing"),
        ({"MESSAGING": "djtest.messaging"}, "as 'module:attribute'"),
        ({"MESSAGING": "djtest.messaging:default", "DATABASE": "nope"}, "'nope'"),
        ({"MESSAGING": "djtest.nothing:messaging"}, "no module 'djtest.nothing'"),
        ({"MESSAGING": "djtest.messaging:default", "DATABSE": "x"}, "unknown key(s) DATABSE"),
    ],
)
def test_settings_are_checked_in_one_sentence(busway, problem):
    with override_settings(BUSWAY=busway), pytest.raises(ImproperlyConfigured) as error:
        checked_messaging(configured())
    assert problem in str(error.value)


def test_a_messaging_on_its_own_engine_is_refused(tmp_path):
    import djtest.messaging

    djtest.messaging.on_a_url = Messaging(database=f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with pytest.raises(ImproperlyConfigured) as error:
            checked_messaging(BuswaySettings("djtest.messaging:on_a_url", "default"))
    finally:
        del djtest.messaging.on_a_url
    assert "Messaging(database=django_database())" in str(error.value)


def test_import_busway_imports_no_django():
    code = "import sys, busway; assert 'django' not in sys.modules, 'django imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_django_the_integration_says_which_extra_to_install():
    code = (
        "import sys; sys.modules['django'] = None\n"
        "try:\n    import busway.django\nexcept ImportError as error:\n    print(error)\n"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install 'busway[django]'" in found.stdout, found.stderr


def test_sqlite_without_immediate_transactions_is_warned_about():
    from django.db import connections

    from busway.django.checks import sqlite_transactions

    assert sqlite_transactions() == []
    options = connections["default"].settings_dict["OPTIONS"]
    saved = dict(options)
    options.pop("transaction_mode")
    try:
        (warning,) = sqlite_transactions()
    finally:
        options.update(saved)
    assert warning.id == "busway.W001"
    assert '"transaction_mode": "IMMEDIATE"' in warning.hint


async def test_the_asyncio_paths_are_refused_in_one_sentence():
    from asgiref.sync import sync_to_async

    messaging = await sync_to_async(messaging_for)("default")
    with pytest.raises(ConfigurationError) as error:
        await messaging.gateway(OutboxBus).apublish(OrderPlaced("a-1"))
    assert "use send() and publish() (not asend/apublish)" in str(error.value)
