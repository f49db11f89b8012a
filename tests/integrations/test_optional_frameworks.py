"""The framework integrations are optional: ``import busway`` needs no framework, and an
integration whose framework is missing says which extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest


def python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_importing_busway_imports_no_framework() -> None:
    loaded = python(
        "import sys, busway\n"
        "frameworks = {'fastapi', 'starlette', 'flask', 'werkzeug', 'flask_sqlalchemy', 'django'}\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & frameworks))"
    )
    assert loaded == "[]"


@pytest.mark.parametrize(
    ("module", "framework", "extra"),
    [("busway.fastapi", "fastapi", "fastapi"), ("busway.flask", "flask", "flask")],
)
def test_an_integration_without_its_framework_names_the_extra(
    module: str, framework: str, extra: str
) -> None:
    message = python(
        f"import sys\nsys.modules[{framework!r}] = None  # as if it were not installed\n"
        f"try:\n    import {module}\nexcept ImportError as error:\n    print(error)"
    )
    assert message == (
        f"{module} needs an optional dependency that is not installed; "
        f"install it with: pip install 'busway[{extra}]'"
    )
