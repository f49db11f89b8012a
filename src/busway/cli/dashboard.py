"""``busway dashboard``: serve the dashboard, on loopback unless told otherwise."""

from __future__ import annotations

import contextlib
import ipaddress
import socket

import click

from busway.cli.app import ConfigError, app_option, opened


@click.command()
@app_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address to listen on; any other than loopback needs --token.",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--token",
    envvar="BUSWAY_DASHBOARD_TOKEN",
    help="Ask every request for this token (env: BUSWAY_DASHBOARD_TOKEN, which keeps it out "
    "of the process list).",
)
@click.option("--read-only", is_flag=True, help="Show everything, replay and delete nothing.")
def dashboard(app: str, host: str, port: int, token: str | None, read_only: bool) -> None:
    """Serve the dashboard: channels, handlers and dead letters in a browser.

    Without a token it listens on loopback only, and answers only this machine.
    """
    if token is None and not _loopback(host):
        raise ConfigError(
            f"--host {host} can be reached from other machines, so the dashboard needs a "
            "token: pass --token (or set BUSWAY_DASHBOARD_TOKEN), or listen on 127.0.0.1"
        )
    try:
        import uvicorn

        from busway.dashboard import dashboard_app
    except ImportError as error:
        raise ConfigError(
            f"busway dashboard needs {error.name}: pip install 'busway[dashboard]'"
        ) from None
    with opened(app) as messaging:
        application = dashboard_app(messaging, token=token, read_only=read_only)
        listening = _listen(host, port)
        shown_host, shown_port = listening.getsockname()[:2]
        shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host
        click.echo(
            f"busway dashboard on http://{shown_host}:{shown_port}/"
            + (" (read-only)" if read_only else "")
            + (", asking for its token" if token else ", for this machine only"),
            err=True,
        )
        server = uvicorn.Server(uvicorn.Config(application, log_level="warning"))
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn raises Ctrl+C again once stopped
            server.run(sockets=[listening])


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM
        )[0]
        listening = socket.create_server(address, family=family)
    except OSError as error:
        raise ConfigError(f"the dashboard cannot listen on {host}:{port}: {error}") from None
    return listening
