"""``dashboard_app``: the dashboard's routes, each page read from the application's
``Messaging`` in a worker thread (its store and channels are sync)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from busway.dashboard import letters
from busway.dashboard.channels import DepthHistory, channel_rows
from busway.dashboard.guard import (
    CSRF_FIELD,
    LOGIN_PATH,
    Access,
    Guard,
    expired_session_cookie,
    session_cookie,
)
from busway.dashboard.handlers import handler_rows
from busway.dashboard.rendering import Pages
from busway.dashboard.workers import worker_rows
from busway.errors import ConfigurationError
from busway.messaging import Messaging

T = TypeVar("T")


def dashboard_app(
    messaging: Messaging,
    *,
    token: str | None = None,
    read_only: bool = False,
    refresh: float = 5.0,
) -> Starlette:
    """The dashboard of ``messaging``, as an ASGI app to serve or to mount.

    Without ``token`` it answers only requests from this machine (loopback, not through a
    proxy); with one, only requests that carry it (``Authorization: Bearer``, or the cookie
    its login form sets). Replaying and deleting are POSTs from its own pages, refused
    cross-site; ``read_only`` hides and refuses them. ``refresh``: seconds between reloads
    when a page's auto-refresh is on.
    """
    if not refresh >= 1:
        raise ConfigurationError(
            f"dashboard_app(refresh={refresh!r}): the pages reload at most once a second; "
            "give refresh=1 or more seconds"
        )
    access = Access.of(token)
    pages = Pages(access, read_only, refresh)
    dashboard = _Dashboard(messaging, access, pages)
    return Starlette(
        routes=dashboard.routes(),
        middleware=[Middleware(Guard, access=access, login_page=pages.login)],
        exception_handlers={ConfigurationError: dashboard.configuration_error},
    )


class _Dashboard:
    def __init__(self, messaging: Messaging, access: Access, pages: Pages) -> None:
        self.messaging = messaging
        self.access = access
        self.pages = pages
        self.history = DepthHistory()

    def routes(self) -> list[Route]:
        return [
            Route("/", self.channels, name="channels"),
            Route("/handlers", self.handlers, name="handlers"),
            Route("/workers", self.workers, name="workers"),
            Route("/dead-letters", self.dead_letters, name="dead_letters"),
            Route("/dead-letters/replay", self.replay, methods=["POST"]),
            Route("/dead-letters/delete", self.delete, methods=["POST"]),
            Route("/dead-letters/{letter_id}", self.dead_letter, name="dead_letter"),
            Route(LOGIN_PATH, self.login_form, methods=["GET"]),
            Route(LOGIN_PATH, self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
        ]

    async def channels(self, request: Request) -> Response:
        rows = await _in_thread(channel_rows, self.messaging, self.history)
        return self.pages.render(request, "channels.html", page="channels", rows=rows)

    async def handlers(self, request: Request) -> Response:
        rows = await _in_thread(handler_rows, self.messaging)
        return self.pages.render(request, "handlers.html", page="handlers", rows=rows)

    async def workers(self, request: Request) -> Response:
        rows = await _in_thread(worker_rows, self.messaging)
        return self.pages.render(request, "workers.html", page="workers", rows=rows)

    async def dead_letters(self, request: Request) -> Response:
        filters = letters.Filters.of(request.query_params)
        found = await _in_thread(filters.select, self.messaging)
        known = await _in_thread(self.messaging.dead_letters.list)
        blocked = await _in_thread(self.messaging.dead_letters.blocked)
        return self.pages.render(
            request,
            "dead_letters.html",
            page="dead_letters",
            filters=filters,
            blocked=blocked,
            letters=found[: letters.SHOWN],
            total=len(found),
            ages=letters.AGES,
            channels=sorted({*self.messaging.channels, *(each.channel for each in known)}),
            handlers=sorted(info.name for info in self.messaging.handlers),
            errors=sorted({each.error_type.rpartition(".")[2] for each in known}),
            outcome=letters.Outcome.of(request.query_params),
            summary=letters.error_summary,
        )

    async def dead_letter(self, request: Request) -> Response:
        letter_id = request.path_params["letter_id"]
        letter = await _in_thread(self.messaging.dead_letters.get, letter_id)
        if letter is None:
            return self.pages.render(
                request, "missing.html", 404, page="dead_letters", letter_id=letter_id
            )
        unreadable = await _in_thread(self.messaging.dead_letters.unreadable, letter)
        return self.pages.render(
            request,
            "dead_letter.html",
            page="dead_letters",
            letter=letter,
            unreadable=unreadable,
            body=letters.body_text(letter.body),
            headers={key: letters.header_text(value) for key, value in letter.headers.items()},
            back=request.query_params.get("back", ""),
        )

    async def replay(self, request: Request) -> Response:
        return await self._act(request, letters.replay)

    async def delete(self, request: Request) -> Response:
        return await self._act(request, letters.delete)

    async def _act(
        self, request: Request, action: Callable[[Messaging, Sequence[str]], letters.Outcome]
    ) -> Response:
        form = await self._checked_form(request)
        if isinstance(form, Response):
            return form
        if self.pages.read_only:
            return _refused("the dashboard is read-only: it replays and deletes nothing")
        filters = letters.Filters.of(form)
        if form.get("all") == "1":
            chosen = [letter.id for letter in await _in_thread(filters.select, self.messaging)]
        else:
            chosen = [value for value in form.getlist("id") if isinstance(value, str)]
        outcome = await _in_thread(action, self.messaging, chosen)
        query = filters.query(**outcome.query())
        return RedirectResponse(f"{_base(request)}/dead-letters?{query}", status_code=303)

    async def login_form(self, request: Request) -> Response:
        if self.access.token is None or self.access.signed_in(request.headers, request.cookies):
            return RedirectResponse(f"{_base(request)}/", status_code=303)
        return self.pages.login(request, 200, next_path=request.query_params.get("next", "/"))

    async def login(self, request: Request) -> Response:
        form = await self._checked_form(request)
        if isinstance(form, Response):
            return form
        next_path = form.get("next")
        if not isinstance(next_path, str) or not _inside(next_path) or next_path == LOGIN_PATH:
            next_path = "/"
        given = form.get("token")
        if not isinstance(given, str) or not self.access.correct(given):
            return self.pages.login(request, wrong=True, next_path=next_path)
        response = RedirectResponse(f"{_base(request)}{next_path}", status_code=303)
        response.headers.append("set-cookie", session_cookie(request.scope, self.access))
        return response

    async def logout(self, request: Request) -> Response:
        form = await self._checked_form(request)
        if isinstance(form, Response):
            return form
        response = RedirectResponse(f"{_base(request)}{LOGIN_PATH}", status_code=303)
        response.headers.append("set-cookie", expired_session_cookie(request.scope))
        return response

    async def _checked_form(self, request: Request) -> FormData | Response:
        form = await request.form()
        if not self.access.csrf_valid(request.state.csrf_nonce, form.get(CSRF_FIELD)):
            return _refused(
                "the form's CSRF field does not match its cookie: reload the page and try again"
            )
        return form

    async def configuration_error(self, request: Request, error: Exception) -> Response:
        return PlainTextResponse(str(error), status_code=503)


async def _in_thread(function: Callable[..., T], *args: Any) -> T:
    return await run_in_threadpool(function, *args)


def _refused(reason: str) -> Response:
    return PlainTextResponse(f"refused: {reason}", status_code=403)


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def _inside(path: str) -> bool:
    """Whether ``path`` is a path of this app, not a way to another site."""
    return path.startswith("/") and not path.startswith("//") and "\\" not in path
