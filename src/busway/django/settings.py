"""``settings.BUSWAY``: which ``Messaging`` the Django project uses, on which database.

::

    BUSWAY = {
        "MESSAGING": "shop.messaging:messaging",  # module:attribute of the Messaging
        "DATABASE": "default",                    # the alias busway writes to (the default)
    }
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

_KEYS = ("MESSAGING", "DATABASE")
_EXAMPLE = 'BUSWAY = {"MESSAGING": "myapp.messaging:messaging", "DATABASE": "default"}'


@dataclass(frozen=True, slots=True)
class BuswaySettings:
    messaging: str
    """``module:attribute`` of the project's ``Messaging``."""
    database: str
    """The alias of ``settings.DATABASES`` busway writes to."""


def configured() -> BuswaySettings:
    """``settings.BUSWAY``, checked: one sentence naming what is wrong, and how to fix it."""
    found: Any = getattr(settings, "BUSWAY", None)
    if not isinstance(found, dict):
        raise ImproperlyConfigured(
            f"settings.BUSWAY is {'missing' if found is None else 'not a dict'}; "
            f"busway.django needs it, e.g. {_EXAMPLE}"
        )
    unknown = sorted(set(found) - set(_KEYS))
    if unknown:
        raise ImproperlyConfigured(
            f"settings.BUSWAY has unknown key(s) {', '.join(unknown)}; "
            f"it takes {' and '.join(_KEYS)}, e.g. {_EXAMPLE}"
        )
    messaging = found.get("MESSAGING")
    if not isinstance(messaging, str) or ":" not in messaging:
        raise ImproperlyConfigured(
            f"settings.BUSWAY['MESSAGING'] is {messaging!r}; name the project's Messaging "
            "as 'module:attribute', e.g. 'myapp.messaging:messaging'"
        )
    return BuswaySettings(messaging, database_alias(found.get("DATABASE", "default")))


def database_alias(alias: object) -> str:
    """``alias`` if it names a database of ``settings.DATABASES``."""
    databases = settings.DATABASES
    if not isinstance(alias, str) or alias not in databases:
        raise ImproperlyConfigured(
            f"settings.BUSWAY['DATABASE'] is {alias!r}, which settings.DATABASES does not "
            f"define (it defines {', '.join(map(repr, databases)) or 'none'}); name one of them"
        )
    return alias


def configured_alias() -> str:
    """The alias of ``settings.BUSWAY['DATABASE']`` ('default' if not set)."""
    found: Any = getattr(settings, "BUSWAY", None) or {}
    return database_alias(found.get("DATABASE", "default") if isinstance(found, dict) else None)


def import_attribute(spec: str) -> Any:
    """The object ``module:attribute`` names."""
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not (module_name + ".").startswith(error.name + "."):
            raise
        raise ImproperlyConfigured(
            f"settings.BUSWAY['MESSAGING'] is {spec!r}, but there is no module "
            f"{error.name!r}; check the module name"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ImproperlyConfigured(
                f"settings.BUSWAY['MESSAGING'] is {spec!r}, but {target.__name__!r} has no "
                f"attribute {part!r}"
            )
        target = getattr(target, part)
    return target
