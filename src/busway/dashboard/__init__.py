"""The dashboard: channels, handlers and dead letters in a browser, as a small ASGI app.

``dashboard_app(messaging)`` is the app: serve it with ``busway dashboard --app module:attr``,
or mount it in a FastAPI or Starlette application. Needs the extra:
``pip install 'busway[dashboard]'``. Its modules:

- ``app.py``: ``dashboard_app``, the routes and the pages they render;
- ``guard.py``: who may see it (a token, or loopback only) and cross-site protection;
- ``channels.py``, ``handlers.py``, ``letters.py``: what each page shows, read from the
  application's ``Messaging``; ``workers.py``: the live workers page;
- ``templates/``: the Jinja2 templates, server-rendered, with no build step.
"""

from __future__ import annotations

from importlib.util import find_spec

from busway.errors import MissingExtraError

# python-multipart is imported as python_multipart since 0.0.13, as multipart before.
for _modules in (("starlette",), ("jinja2",), ("python_multipart", "multipart")):
    if not any(find_spec(module) for module in _modules):  # pragma: no cover - as installed
        raise MissingExtraError("busway's dashboard", "dashboard")

from busway.dashboard.app import dashboard_app  # noqa: E402 - once its libraries are known there

__all__ = ["dashboard_app"]
