"""Who the dashboard answers, and which POSTs it takes: checked over HTTP against a real
server, on loopback and on this machine's other address."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from dashboard_shop import BillingBus, Invoice
from dashboard_support import DATABASES, Shop, csrf_of, own_address, serving
from fastapi import FastAPI

from busway.channels.reading import kept_raw
from busway.dashboard import dashboard_app
from busway.errors import ConfigurationError
from busway.liveness import Heartbeat
from busway.recovery import DeadLetter, new_dead_letter_id

pytestmark = DATABASES

TOKEN = "a long random token"


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as made:
        yield made


def other_address() -> str:
    address = own_address()
    if address is None:
        message = "this machine has no address but loopback to reach the dashboard through"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI: {message}", pytrace=False)
        pytest.skip(message)
    return address


def test_without_a_token_a_client_on_another_address_is_refused(
    shop: Shop, client: httpx.Client
) -> None:
    address = other_address()
    with serving(dashboard_app(shop.messaging), host="0.0.0.0") as url:
        port = url.rpartition(":")[2]
        local = client.get(f"http://127.0.0.1:{port}/dead-letters")
        remote = client.get(f"http://{address}:{port}/dead-letters")
    assert local.status_code == 200
    assert remote.status_code == 403
    assert f"the client {address} is not on this machine" in remote.text
    assert "token" in remote.text
    assert shop.letter_ids()[0] not in remote.text


def test_without_a_token_the_app_refuses_a_client_that_is_not_loopback(shop: Shop) -> None:
    """The app's own check, wherever it is mounted: the client address the server gives."""

    async def get(host: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=dashboard_app(shop.messaging), client=(host, 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            return await client.get("/")

    assert asyncio.run(get("203.0.113.9")).status_code == 403
    assert asyncio.run(get("::1")).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{"host": "shop.example:8000"}, {"x-forwarded-for": "198.51.100.7"}, {"forwarded": "for=x"}],
)
def test_without_a_token_a_request_not_for_localhost_is_refused(
    shop: Shop, client: httpx.Client, headers: dict[str, str]
) -> None:
    with serving(dashboard_app(shop.messaging)) as url:
        response = client.get(f"{url}/", headers=headers)
    assert response.status_code == 403
    assert "without a token the dashboard answers only on this machine" in response.text


def test_with_a_token_every_request_carries_it(shop: Shop, client: httpx.Client) -> None:
    address = own_address() or "127.0.0.1"
    with serving(dashboard_app(shop.messaging, token=TOKEN), host="0.0.0.0") as url:
        base = f"http://{address}:{url.rpartition(':')[2]}"
        bare = client.get(f"{base}/dead-letters")
        page = client.get(f"{base}/dead-letters", headers={"accept": "text/html"})
        wrong = client.get(f"{base}/dead-letters", headers={"authorization": "Bearer guess"})
        right = client.get(f"{base}/dead-letters", headers={"authorization": f"Bearer {TOKEN}"})
        post = client.post(f"{base}/dead-letters/delete", data={"id": shop.letter_ids()})
    assert (bare.status_code, wrong.status_code, post.status_code) == (401, 401, 401)
    assert "needs its token" in bare.text
    assert page.status_code == 401 and 'name="token"' in page.text
    assert right.status_code == 200
    assert all(letter in right.text for letter in shop.letter_ids())
    assert len(shop.letter_ids()) == 3


def test_an_empty_token_is_refused_at_start_up(shop: Shop) -> None:
    with pytest.raises(ConfigurationError, match="the dashboard's token is empty"):
        dashboard_app(shop.messaging, token=" ")
    with pytest.raises(ConfigurationError, match="give refresh=1 or more seconds"):
        dashboard_app(shop.messaging, refresh=0)


def test_the_workers_page_lists_the_workers_and_the_silent_ones(
    shop: Shop, client: httpx.Client
) -> None:
    now = time.time()
    for worker_id, pid, last_beat in (("w-live", 101, now), ("w-dead", 202, now - 600)):
        beat = Heartbeat(worker_id, "host-a", pid, ("shipping",), now - 900, last_beat, 5.0, 7, 1)
        shop.messaging.heartbeats.beat(beat)
    try:
        with serving(dashboard_app(shop.messaging)) as url:
            page = client.get(f"{url}/workers")
    finally:
        for worker_id in ("w-live", "w-dead"):
            shop.messaging.heartbeats.remove(worker_id)

    assert page.status_code == 200
    rows = {row.split('"')[0]: row for row in page.text.split('<tr data-worker="')[1:]}
    assert sorted(rows) == ["w-dead", "w-live"]
    assert '<td class="state">alive</td>' in rows["w-live"]
    assert '<span class="bad">silent</span>' in rows["w-dead"]
    assert all(part in rows["w-live"] for part in ("host-a", ">101<", ">shipping<"))


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"origin": "https://evil.example"}, "a request from https://evil.example"),
        ({"origin": "http://127.0.0.1:1"}, "a request from http://127.0.0.1:1"),
        ({"sec-fetch-site": "cross-site"}, "a cross-site request"),
        ({"sec-fetch-site": "same-site"}, "a same-site request"),
    ],
)
def test_a_post_from_another_site_is_refused(
    shop: Shop, client: httpx.Client, headers: dict[str, str], reason: str
) -> None:
    letters = shop.letter_ids()
    with serving(dashboard_app(shop.messaging)) as url:
        csrf = csrf_of(client.get(f"{url}/dead-letters").text)
        response = client.post(
            f"{url}/dead-letters/delete", data={"id": letters, "csrf": csrf}, headers=headers
        )
    assert response.status_code == 403
    assert reason in response.text
    assert shop.letter_ids() == letters


@pytest.mark.parametrize("csrf", [None, "forged", "cookie's own"])
def test_a_post_without_the_field_of_its_cookie_is_refused(
    shop: Shop, client: httpx.Client, csrf: str | None
) -> None:
    letters = shop.letter_ids()
    with serving(dashboard_app(shop.messaging)) as url:
        client.get(f"{url}/dead-letters")
        data: dict[str, object] = {"id": letters}
        if csrf is not None:
            data["csrf"] = client.cookies["busway_dashboard_csrf"] if csrf != "forged" else csrf
        response = client.post(f"{url}/dead-letters/delete", data=data, headers={"origin": url})
    assert response.status_code == 403
    assert "CSRF" in response.text
    assert shop.letter_ids() == letters


def test_a_post_from_the_dashboard_itself_is_taken(shop: Shop, client: httpx.Client) -> None:
    letters = shop.letter_ids()
    with serving(dashboard_app(shop.messaging)) as url:
        csrf = csrf_of(client.get(f"{url}/dead-letters").text)
        response = client.post(
            f"{url}/dead-letters/delete",
            data={"id": letters[:2], "csrf": csrf},
            headers={"origin": url, "sec-fetch-site": "same-origin"},
        )
    assert response.status_code == 303
    assert response.headers["location"].startswith("/dead-letters?done=1&deleted=2")
    assert shop.letter_ids() == letters[2:]


def test_read_only_refuses_to_replay_or_delete(shop: Shop, client: httpx.Client) -> None:
    letters = shop.letter_ids()
    with serving(dashboard_app(shop.messaging, read_only=True)) as url:
        csrf = csrf_of(client.get(f"{url}/dead-letters").text)
        for action in ("replay", "delete"):
            response = client.post(
                f"{url}/dead-letters/{action}",
                data={"id": letters, "csrf": csrf, "all": "1"},
                headers={"origin": url},
            )
            assert response.status_code == 403
            assert "read-only" in response.text
    assert shop.letter_ids() == letters
    assert shop.messaging.channel("shipping").depth() == 0


def test_mounted_in_an_application_its_links_and_cookies_stay_under_its_path(
    shop: Shop, client: httpx.Client
) -> None:
    application = FastAPI()
    application.mount("/ops/busway", dashboard_app(shop.messaging))
    first = shop.letter_ids()[0]
    with serving(application) as url:
        page = client.get(f"{url}/ops/busway/dead-letters")
        letter = client.get(f"{url}/ops/busway/dead-letters/{first}")
        replayed = client.post(
            f"{url}/ops/busway/dead-letters/replay",
            data={"id": first, "csrf": csrf_of(page.text)},
            headers={"origin": url},
        )
    assert page.status_code == 200
    assert f'href="/ops/busway/dead-letters/{first}' in page.text
    assert 'href="/ops/busway/handlers"' in page.text
    assert "Path=/ops/busway" in page.headers["set-cookie"]
    assert letter.status_code == 200 and "CarrierDown" in letter.text
    assert replayed.status_code == 303
    assert replayed.headers["location"].startswith("/ops/busway/dead-letters?")
    assert first not in shop.letter_ids()
    assert shop.messaging.channel("shipping").depth() == 1


def add_letter(shop: Shop, *, failed_ago: float, headers: dict[str, Any] | None = None) -> str:
    """A letter in the shop's store, as a worker would have kept it ``failed_ago`` seconds
    ago."""
    letter = DeadLetter(
        id=new_dead_letter_id(),
        channel="shipping",
        handler="dashboard_shop.ship",
        body=b'{"order_id": "o-old"}',
        headers={"id": "m-old"} if headers is None else headers,
        error_type="dashboard_shop.CarrierDown",
        error_message="the carrier refused order o-old",
        traceback="Traceback (most recent call last):\n...",
        attempts=2,
        failed_at=time.time() - failed_ago,
    )
    shop.messaging.dead_letters.store.add(letter)
    return letter.id


def test_the_filters_narrow_the_list_by_age_error_and_channel(
    shop: Shop, client: httpx.Client
) -> None:
    recent = shop.letter_ids()
    old = add_letter(shop, failed_ago=2 * 3600)

    def listed(query: str) -> set[str]:
        page = client.get(f"{url}/dead-letters?{query}")
        assert page.status_code == 200
        return {letter for letter in [old, *recent] if f'data-letter="{letter}"' in page.text}

    with serving(dashboard_app(shop.messaging)) as url:
        assert listed("within=1h") == set(recent)
        assert listed("within=24h") == {old, *recent}
        assert listed("error=KeyError") == {recent[2]}
        assert listed("error=dashboard_shop.CarrierDown&within=15m") == set(recent[:2])
        assert listed("channel=billing") == {recent[2]}
        assert listed("within=forever") == {old, *recent}  # an unknown age filters nothing


def test_a_letter_whose_headers_cannot_be_read_is_kept_by_a_replay(
    shop: Shop, client: httpx.Client
) -> None:
    letter = add_letter(shop, failed_ago=60, headers=kept_raw(b"{not json"))
    with serving(dashboard_app(shop.messaging)) as url:
        page = client.get(f"{url}/dead-letters/{letter}")
        replayed = client.post(
            f"{url}/dead-letters/replay",
            data={"id": [letter, "no-such-letter"], "csrf": csrf_of(page.text)},
            headers={"origin": url},
        )
        after = client.get(f"{url}{replayed.headers['location']}")
    assert "cannot be read" in page.text and "{not json" in page.text
    assert replayed.status_code == 303
    assert "Kept 1 whose message's headers still cannot be read" in after.text
    assert "1 matched no dead letter" in after.text
    assert letter in shop.letter_ids()


def test_the_dead_letters_page_shows_the_keys_they_hold_back(
    shop: Shop, client: httpx.Client
) -> None:
    bus = shop.messaging.gateway(BillingBus)
    bus.send(Invoice("o-9"), ordering_key="order/o-9")
    bus.send(Invoice("o-9 again"), ordering_key="order/o-9")
    shop.messaging.run("billing")
    (letter,) = [each for each in shop.messaging.dead_letters.list() if "o-9" in each.error_message]

    with serving(dashboard_app(shop.messaging)) as url:
        page = client.get(f"{url}/dead-letters")

    assert page.status_code == 200
    held = page.text.split('id="held-back"')[1].split("</section>")[0]
    assert 'data-key="order/o-9"' in held
    assert f"/dead-letters/{letter.id}" in held
    assert '<td class="num">1</td>' in held  # the second invoice waits behind it
