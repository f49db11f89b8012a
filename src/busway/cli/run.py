"""``busway run``: a worker process consuming channels until stopped."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

import click

from busway.cli.app import ConfigError, app_option, opened
from busway.cli.console import ProgressLog, StatusLine, fields, summary_text
from busway.cli.logs import LEVELS, configure_logging
from busway.cli.values import converted, parse_duration, parse_size
from busway.errors import UnknownChannelError
from busway.messaging import Messaging
from busway.worker import HEARTBEAT_INTERVAL, RunResult, graceful_signals

log = logging.getLogger("busway.cli")

EXIT_FAILURE = 1


@click.command()
@app_option
@click.argument("channels", metavar="CHANNEL...", nargs=-1, required=True)
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many messages.")
@click.option(
    "--time-limit",
    metavar="DURATION",
    callback=converted(parse_duration),
    help="Stop after this long, e.g. 90, 30s, 10m, 2h.",
)
@click.option(
    "--memory-limit",
    metavar="SIZE",
    callback=converted(parse_size),
    help="Stop once peak memory passes this, e.g. 512M, 1G.",
)
@click.option("--stop-on-failure", is_flag=True, help="Stop (exit code 1) when a message fails.")
@click.option("--until-empty", is_flag=True, help="Stop when the channels have nothing ready.")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Messages handled at once, each in its own thread.",
)
@click.option(
    "--handler-timeout",
    metavar="DURATION",
    callback=converted(parse_duration),
    help="Fail a handling that takes longer (unless its handler or bus sets its own limit).",
)
@click.option(
    "--shutdown-timeout",
    metavar="DURATION",
    callback=converted(parse_duration),
    help="After SIGTERM/SIGINT, wait this long for the handler in hand, then exit (code 3).",
)
@click.option(
    "--log-level",
    type=click.Choice(LEVELS, case_sensitive=False),
    envvar="BUSWAY_LOG_LEVEL",
    help="Log every logger, the application's too, at this level and above [default: info] "
    "(env: BUSWAY_LOG_LEVEL).",
)
@click.option(
    "--log-each",
    is_flag=True,
    help="A log line for each message handled: its id, type, outcome and time taken.",
)
@click.option(
    "--heartbeat-interval",
    metavar="DURATION",
    default=f"{HEARTBEAT_INTERVAL:g}s",
    callback=converted(parse_duration),
    show_default=True,
    help="Record the worker's heartbeat this often (see busway workers).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve the Prometheus metrics of Messaging(instruments=[Metrics()]) on this port, "
    "at /metrics, while the worker runs.",
)
@click.option(
    "--metrics-address",
    default="127.0.0.1",
    show_default=True,
    help="The address --metrics-port listens on.",
)
@click.pass_context
def run(
    ctx: click.Context,
    app: str,
    channels: tuple[str, ...],
    limit: int | None,
    time_limit: float | None,
    memory_limit: int | None,
    stop_on_failure: bool,
    until_empty: bool,
    concurrency: int,
    handler_timeout: float | None,
    shutdown_timeout: float | None,
    log_level: str | None,
    log_each: bool,
    heartbeat_interval: float,
    metrics_port: int | None,
    metrics_address: str,
) -> None:
    """Consume CHANNEL... until stopped.

    Logs every logger at --log-level to standard error: JSON lines, or readable lines on a
    terminal. The worker's heartbeat is kept for busway workers and busway health. The
    application's schedules fire while it runs.

    SIGTERM and SIGINT finish the message in hand, then stop; a second signal, or
    --shutdown-timeout, ends the process at once, its messages unacknowledged. Exit code 1
    means the run stopped on a failure (--stop-on-failure), 2 a usage or configuration
    error, 3 a worker ended in the middle of a handler.
    """
    stream = sys.stderr
    label = ", ".join(channels)
    status = StatusLine(stream, label) if stream.isatty() else None
    progress: Callable[[RunResult], None] = status.update if status else ProgressLog().update
    with opened(app) as messaging:
        configure_logging(stream, status, log_level, log_each)
        try:
            worker = messaging.worker(
                list(channels),
                limit=limit,
                time_limit=time_limit,
                until_empty=until_empty,
                memory_limit=memory_limit,
                stop_on_failure=stop_on_failure,
                on_progress=progress,
                handler_timeout=handler_timeout,
                heartbeat_interval=heartbeat_interval,
            )
        except UnknownChannelError as error:
            raise ConfigError(str(error)) from None
        metrics = _metrics_served(messaging, metrics_port, metrics_address)
        with (
            graceful_signals(worker, shutdown_timeout=shutdown_timeout),
            messaging.scheduling(),
            metrics,
        ):
            log.info(
                "consuming %s %s",
                label,
                "until empty" if until_empty else "until stopped",
                extra={"figures": {"channels": list(channels), "concurrency": concurrency}},
            )
            result = worker.run(concurrency)
    if status is not None:
        status.finish(result)
    log.info(summary_text(result), extra=fields(result, reason=result.reason))
    if result.reason == "failure":
        ctx.exit(EXIT_FAILURE)


@contextlib.contextmanager
def _metrics_served(messaging: Messaging, port: int | None, address: str) -> Iterator[None]:
    """``/metrics`` on ``address:port`` while the block runs, if a port is given."""
    if port is None:
        yield
        return
    try:
        from busway.metrics import Metrics
    except ImportError as error:
        raise ConfigError(f"--metrics-port: {error}") from None
    found = [i for i in messaging.runtime.instruments.all if isinstance(i, Metrics)]
    if not found:
        raise ConfigError(
            "--metrics-port: this application counts no metrics; pass "
            "Messaging(instruments=[Metrics()]) (from busway.metrics import Metrics)"
        )
    try:
        server = found[0].serve(port, address)
    except OSError as error:
        raise ConfigError(f"--metrics-port: cannot listen on {address}:{port}: {error}") from None
    host, bound = server.server_address[:2]
    log.info("metrics on http://%s:%d/metrics", host, bound, extra={"metrics_port": bound})
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
