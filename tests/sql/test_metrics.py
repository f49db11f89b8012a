"""Prometheus metrics of a worker, scraped over HTTP after a run whose outcome is known."""

from __future__ import annotations

import threading
import urllib.request
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from busway import EventBus, Messaging, RetryPolicy, SqlChannel, asynchronous, event_handler
from busway.metrics import Metrics


@dataclass
class JobWasQueued:
    number: int


@asynchronous("jobs")
class Jobs(EventBus):
    """Queued on the jobs channel."""


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize("redo_batches", [False, True], ids=["default", "redo_batches"])
def test_a_scrape_counts_what_a_run_did(database_url: str, redo_batches: bool) -> None:
    done: list[int] = []

    @event_handler
    def work(event: JobWasQueued) -> None:
        if event.number % 5 == 0:
            raise ValueError(f"job {event.number} is broken")
        done.append(event.number)

    metrics = Metrics()
    messaging = Messaging(
        handlers=[work],
        channels=[SqlChannel("jobs", redo_batches=redo_batches)],
        database=database_url,
        retry=RetryPolicy(retries=2, initial_delay=0, jitter=0),
        instruments=[metrics],
    )
    server = metrics.serve(0)
    try:
        messaging.setup()
        jobs = messaging.gateway(Jobs)
        for number in range(1, 21):  # 4 broken: 5, 10, 15, 20
            jobs.publish(JobWasQueued(number))
        port = server.server_port
        before = scrape(port)
        assert before[("busway_messages_sent_total", (("channel", "jobs"),))] == 20
        assert before[("busway_channel_depth", (("channel", "jobs"),))] == 20
        assert before[("busway_channel_oldest_age_seconds", (("channel", "jobs"),))] >= 0

        worker = threading.Thread(target=messaging.run, args=("jobs",))
        worker.start()
        worker.join(timeout=60)
        assert not worker.is_alive()
        after = scrape(port)
    finally:
        server.shutdown()
        messaging.close()

    handler = work.__qualname__
    name = next(key[1] for key in after if key[0] == "busway_messages_handled_total")
    labels = dict(name)
    assert labels["channel"] == "jobs" and labels["handler"].endswith(handler)
    handler_label = labels["handler"]
    jobs_handler = (("channel", "jobs"), ("handler", handler_label))
    failed = (
        ("channel", "jobs"),
        ("error_type", "builtins.ValueError"),
        ("handler", handler_label),
    )
    # A redone batch calls its handlers again (their database writes were rolled back); the
    # metrics count each message's success once.
    assert sorted(set(done)) == [n for n in range(1, 21) if n % 5]
    assert after[("busway_messages_handled_total", jobs_handler)] == 16
    assert after[("busway_messages_failed_total", failed)] == 4 * 3  # each tried three times
    assert after[("busway_messages_retried_total", jobs_handler)] == 4 * 2
    assert after[("busway_messages_dead_lettered_total", failed)] == 4
    calls = after[("busway_handling_seconds_count", jobs_handler)]  # every call is timed
    assert calls >= 16 + 12 if redo_batches else calls == 16 + 12
    # 20 queued, then 8 sent back for their retries; a redone batch makes its sends again
    sent = after[("busway_messages_sent_total", (("channel", "jobs"),))]
    assert sent >= 28 if redo_batches else sent == 28
    assert after[("busway_channel_depth", (("channel", "jobs"),))] == 0
    assert len(messaging.dead_letters.list()) == 4
