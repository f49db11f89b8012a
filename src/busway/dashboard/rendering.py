"""Pages rendered from the templates shipped in this package, with what every page needs:
links under the app's mount path, the CSRF field of its forms, and a content security policy
that lets only its own inline script run."""

from __future__ import annotations

import datetime
import secrets
import time
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from busway.dashboard.guard import Access

POLICY = (
    "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class Pages:
    def __init__(self, access: Access, read_only: bool, refresh: float) -> None:
        self.access = access
        self.read_only = read_only
        self.refresh = refresh
        self.env = Environment(
            loader=PackageLoader("busway.dashboard", "templates"),
            autoescape=select_autoescape(default=True),
            undefined=StrictUndefined,
        )
        self.env.filters.update(when=when, age=age, ago=ago, rate=rate)

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        html = self.env.get_template(template).render(
            base=str(request.scope.get("root_path", "")),
            csrf=self.access.csrf_field(request.state.csrf_nonce),
            read_only=self.read_only,
            with_token=self.access.token is not None,
            refresh=self.refresh,
            nonce=nonce,
            **context,
        )
        response = HTMLResponse(html, status_code)
        response.headers["content-security-policy"] = POLICY.format(nonce=nonce)
        return response

    def login(
        self,
        request: Request,
        status_code: int = 401,
        wrong: bool = False,
        next_path: str | None = None,
    ) -> HTMLResponse:
        """The login form; signing in leads on to ``next_path``, by default the page asked
        for."""
        if next_path is None:
            next_path = request.query_params.get("next") or _path_in_app(request)
        return self.render(
            request, "login.html", status_code, page="login", wrong=wrong, next=next_path
        )


def _path_in_app(request: Request) -> str:
    root = str(request.scope.get("root_path", ""))
    path = request.url.path
    path = path[len(root) :] if root and path.startswith(root) else path
    return path + (f"?{request.url.query}" if request.url.query else "")


def when(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def ago(timestamp: float) -> str:
    return f"{age(max(0.0, time.time() - timestamp))} ago"


def rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}/s" if abs(value) >= 0.05 else "steady"
