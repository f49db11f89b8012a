"""Settings of the shop example: SQLite by default, PostgreSQL or MariaDB by environment.

SHOP_DATABASE=postgresql  (PostgreSQL on 127.0.0.1, user postgres, database test)
SHOP_DATABASE=mariadb     (MariaDB on 127.0.0.1, user root, database test)
"""

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

SECRET_KEY = "the-shop-example-is-not-deployed"
DEBUG = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["busway.django", "shop"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "shop.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_DATABASES = {
    "sqlite": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_SQLITE_FILE", str(HERE / "shop.sqlite3")),
        # busway's worker takes the write lock when its transaction begins, and readers
        # never wait for a writer: IMMEDIATE transactions and the WAL journal.
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL",
        },
    },
    "postgresql": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "test",
        "USER": "postgres",
        "HOST": "127.0.0.1",
    },
    "mariadb": {
        "ENGINE": "django.db.backends.mysql",
        "NAME": "test",
        "USER": "root",
        "HOST": "127.0.0.1",
    },
}
_KIND = os.environ.get("SHOP_DATABASE", "sqlite")
if _KIND == "mariadb":
    import pymysql  # or `pip install mysqlclient`, and no need for this

    pymysql.install_as_MySQLdb()

DATABASES = {"default": {**_DATABASES[_KIND], "ATOMIC_REQUESTS": True}}

# Which Messaging the project uses, and on which database alias busway writes.
BUSWAY = {"MESSAGING": "shop.messaging:messaging", "DATABASE": "default"}
