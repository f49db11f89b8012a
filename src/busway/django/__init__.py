"""Django integration: the outbox inside ``transaction.atomic()``, workers whose handlers write
through the ORM in the transaction of their message, and ``manage.py busway ...``.

Add ``"busway.django"`` to ``INSTALLED_APPS``, name the project's ``Messaging`` in
``settings.BUSWAY`` (``busway.django.settings``), and build it with
``Messaging(database=django_database())``. See docs/django.md.

Needs the extra: ``pip install 'busway[django]'``.
"""

from busway.errors import MissingExtraError

try:
    import django  # noqa: F401
except ImportError as error:  # pragma: no cover - the extra is installed in tests
    raise MissingExtraError("busway.django", "django") from error

from busway.django.database import DjangoDatabase, django_database
from busway.django.messaging import get_messaging

__all__ = ["DjangoDatabase", "django_database", "get_messaging"]
