"""A worker process for the busway.django tests: ``manage.py busway run work --until-empty``
on the databases its test gives it (``BUSWAY_DJANGO_DATABASES``), with settings.BUSWAY on
the alias in ``DJTEST_ALIAS``.

Run as ``python -c "import django_worker; django_worker.main()"`` with this folder on
``PYTHONPATH``; the handler's behaviour comes from ``DJTEST_WORKER``, ``DJTEST_BLOCK_AT``,
``DJTEST_MARKER`` and ``DJTEST_BATCH`` (see djtest.messaging).
"""

import os
import sys

import djsettings


def main() -> None:
    alias = os.environ["DJTEST_ALIAS"]
    djsettings.configure_worker(alias)
    from django.core.management import execute_from_command_line

    execute_from_command_line(
        ["manage.py", "busway", "run", "work", "--until-empty", *sys.argv[1:]]
    )
