"""Django settings of the busway.django tests, made once per process by ``configure()``.

Database aliases: ``default``, a SQLite file (so that a worker process shares it), ``other``,
another SQLite file busway is not told about, and, when
their servers are reachable (always on CI, where a missing one fails the tests),
``postgresql`` and ``mariadb``. The test run's databases are named after its process id;
a worker process started by a test gets them in ``BUSWAY_DJANGO_DATABASES`` and uses them as
they are.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import pymysql
from sqlalchemy.engine import make_url

from dbsupport import SERVERS, _reachable

pymysql.install_as_MySQLdb()  # Django's MySQL backend on PyMySQL (mysqlclient needs headers)

WORKER_DATABASES = "BUSWAY_DJANGO_DATABASES"
BACKENDS = {
    "sqlite": "django.db.backends.sqlite3",
    "postgresql": "django.db.backends.postgresql",
    "mariadb": "django.db.backends.mysql",
}


def _server(service: str, test_name: str) -> dict[str, Any] | None:
    url = make_url(SERVERS[service])
    if _reachable(url) is not None and os.environ.get("CI") != "true":
        return None
    return {
        "ENGINE": BACKENDS[service],
        "NAME": url.database,
        "USER": url.username or "",
        "PASSWORD": url.password or "",
        "HOST": url.host or "",
        "PORT": str(url.port or ""),
        "TEST": {"NAME": test_name},
    }


def databases() -> dict[str, dict[str, Any]]:
    """The test run's databases; in a worker process, the ones its test gave it."""
    given = os.environ.get(WORKER_DATABASES)
    if given:
        return dict(json.loads(given))
    folder = tempfile.mkdtemp(prefix="busway-django-")
    sqlite_file = os.path.join(folder, "busway.sqlite3")
    found: dict[str, dict[str, Any]] = {
        "default": {
            "ENGINE": BACKENDS["sqlite"],
            "NAME": sqlite_file,
            "TEST": {"NAME": sqlite_file},
        }
    }
    other_file = os.path.join(folder, "other.sqlite3")
    found["other"] = {
        "ENGINE": BACKENDS["sqlite"],
        "NAME": other_file,
        "TEST": {"NAME": other_file},
    }
    test_name = f"test_busway_django_{os.getpid()}"
    for service in ("postgresql", "mariadb"):
        server = _server(service, test_name)
        if server is not None:
            found[service] = server
    for options in found.values():
        if options["ENGINE"] == BACKENDS["sqlite"]:
            # A worker's claim must take the write lock at BEGIN, as busway's own SQLite does.
            options["OPTIONS"] = {
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL",
            }
    return found


def as_worker_sees_them(found: dict[str, dict[str, Any]]) -> str:
    """``found`` with the test databases' names, for a worker process."""
    given: dict[str, dict[str, Any]] = {}
    for alias, options in found.items():
        options = dict(options)
        test = options.pop("TEST", {})
        if test.get("NAME"):
            options["NAME"] = test["NAME"]
        given[alias] = options
    return json.dumps(given)


def configure_worker(alias: str) -> None:
    """The settings of a worker process, whose settings.BUSWAY is on ``alias``."""
    configure(BUSWAY={"MESSAGING": f"djtest.messaging:{alias}", "DATABASE": alias})


def configure(**extra: Any) -> None:
    from django.conf import settings

    if settings.configured:
        return
    options: dict[str, Any] = dict(
        BUSWAY={"MESSAGING": "djtest.messaging:default", "DATABASE": "default"}
    )
    options.update(extra)
    settings.configure(
        DEBUG=False,
        SECRET_KEY="busway-tests",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=["django.contrib.contenttypes", "busway.django", "djtest"],
        DATABASES=databases(),
        ROOT_URLCONF="djtest.urls",
        MIDDLEWARE=[],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        **options,
    )
    import django

    django.setup()
