"""Who may see the dashboard, and which requests may change anything.

- Without a token, only this machine: the client is on loopback, the request did not come
  through a proxy, and its ``Host`` names loopback (so that a web page elsewhere cannot reach
  the dashboard by pointing its own name at 127.0.0.1).
- With a token, every request carries it: ``Authorization: Bearer TOKEN``, or the cookie the
  login form sets.
- A POST comes from the dashboard's own pages: not cross-site by ``Sec-Fetch-Site`` or
  ``Origin``, and with the CSRF field of its form, which is tied to a cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from busway.errors import ConfigurationError

SESSION_COOKIE = "busway_dashboard_session"
CSRF_COOKIE = "busway_dashboard_csrf"
CSRF_FIELD = "csrf"
LOGIN_PATH = "/login"
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")
LOOPBACK_NAMES = ("localhost",)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


@dataclass(frozen=True, slots=True)
class Access:
    """The dashboard's token (None: loopback only) and the key its CSRF fields are signed by."""

    token: str | None
    secret: bytes

    @classmethod
    def of(cls, token: str | None) -> Access:
        if token is not None and not token.strip():
            raise ConfigurationError(
                "the dashboard's token is empty; give a long random one, e.g. from "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        secret = secrets.token_bytes(32) if token is None else _digest(token, "csrf")
        return cls(token, secret)

    @property
    def session_value(self) -> str:
        """What the session cookie holds: derived from the token, never the token itself."""
        assert self.token is not None
        return _digest(self.token, "session").hex()

    def signed_in(self, headers: Headers, cookies: dict[str, str]) -> bool:
        assert self.token is not None
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _same(credentials.strip(), self.token):
            return True
        return _same(cookies.get(SESSION_COOKIE, ""), self.session_value)

    def correct(self, token: str) -> bool:
        return self.token is not None and _same(token, self.token)

    def csrf_field(self, nonce: str) -> str:
        """The value a form carries for the CSRF cookie ``nonce``."""
        return hmac.new(self.secret, nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, nonce: str | None, field: object) -> bool:
        if not nonce or not isinstance(field, str):
            return False
        return _same(field, self.csrf_field(nonce))


class Guard:
    """ASGI middleware in front of every page: the checks above, and headers that keep the
    pages out of frames and caches."""

    def __init__(
        self, app: ASGIApp, access: Access, login_page: Callable[[Request], Response]
    ) -> None:
        self.app = app
        self.access = access
        self.login_page = login_page
        """The 401 a browser gets without the token: the login form."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the dashboard has none, and answers none
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Request(scope).cookies.get(CSRF_COOKIE)
        nonce = given or secrets.token_urlsafe(32)
        scope.setdefault("state", {})["csrf_nonce"] = nonce

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if not given:
                    headers.append("set-cookie", _cookie(scope, CSRF_COOKIE, nonce))
            await send(message)

        refusal = self.refusal(Request(scope))
        if refusal is not None:
            await refusal(scope, receive, send_secured)
            return
        await self.app(scope, receive, send_secured)

    def refusal(self, request: Request) -> Response | None:
        if self.access.token is None:
            problem = _not_local(request)
            if problem is not None:
                return PlainTextResponse(
                    f"{problem}: without a token the dashboard answers only on this machine; "
                    "start it with a token (busway dashboard --token, or "
                    "dashboard_app(messaging, token=...)) to reach it from elsewhere",
                    status_code=403,
                )
        if request.method not in SAFE_METHODS:
            problem = _cross_site(request)
            if problem is not None:
                return PlainTextResponse(
                    f"refused: {problem}; the dashboard's actions are taken from its own pages",
                    status_code=403,
                )
        if self.access.token is None or _path_in_app(request) == LOGIN_PATH:
            return None
        if self.access.signed_in(request.headers, request.cookies):
            return None
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            return self.login_page(request)
        return PlainTextResponse(
            "this dashboard needs its token: send Authorization: Bearer TOKEN, or sign in "
            "through its login page",
            status_code=401,
        )


def _not_local(request: Request) -> str | None:
    host = request.client.host if request.client else ""
    if not _loopback(host):
        return f"the client {host or 'of unknown address'} is not on this machine"
    if any(name in request.headers for name in PROXY_HEADERS):
        return "the request came through a proxy"
    name = request.headers.get("host", "")
    if not _loopback(_hostname(name)):
        return f"the request is for {name or 'no host'}, not for localhost"
    return None


def _cross_site(request: Request) -> str | None:
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site != "same-origin":
        return f"a {fetch_site} request"
    origin = request.headers.get("origin")
    if origin is not None:
        # The host, not the scheme: behind a proxy that ends TLS the app sees http.
        own = request.headers.get("host", request.url.netloc).lower()
        if urlsplit(origin).netloc.lower() != own:
            return f"a request from {origin}"
    return None


def _loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _hostname(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


def _path_in_app(request: Request) -> str:
    root = request.scope.get("root_path", "")
    path: str = request.scope["path"]
    return path[len(root) :] if root and path.startswith(root) else path


def cookie_path(scope: Scope) -> str:
    return str(scope.get("root_path") or "") or "/"


def _cookie(scope: Scope, name: str, value: str, max_age: int | None = None) -> str:
    cookie: SimpleCookie = SimpleCookie()
    cookie[name] = value
    morsel = cookie[name]
    morsel["path"] = cookie_path(scope)
    morsel["httponly"] = True
    morsel["samesite"] = "Strict"
    if scope.get("scheme") == "https":
        morsel["secure"] = True
    if max_age is not None:
        morsel["max-age"] = max_age
    return morsel.OutputString()


def session_cookie(scope: Scope, access: Access) -> str:
    return _cookie(scope, SESSION_COOKIE, access.session_value)


def expired_session_cookie(scope: Scope) -> str:
    return _cookie(scope, SESSION_COOKIE, "", max_age=0)


def _digest(token: str, purpose: str) -> bytes:
    return hmac.new(token.encode(), f"busway-dashboard-{purpose}".encode(), "sha256").digest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
