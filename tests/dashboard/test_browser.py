"""The dashboard in a real headless Chromium, over a real database whose dead letters a real
worker made: find a letter, read it, replay it and see it handled."""

from __future__ import annotations

from dashboard_support import DATABASES, Shop, serving
from playwright.sync_api import Page, expect

from busway.dashboard import dashboard_app

pytestmark = DATABASES

SHIP = "dashboard_shop.ship"


def test_a_dead_letter_is_found_read_replayed_and_handled_once(shop: Shop, page: Page) -> None:
    with serving(dashboard_app(shop.messaging)) as url:
        page.goto(f"{url}/")
        shipping = page.locator('tr[data-channel="shipping"]')
        expect(shipping.locator("td.dead")).to_have_text("2")
        expect(shipping.locator("td.depth")).to_have_text("0")

        page.get_by_role("link", name="Dead letters").click()
        rows = page.locator("#dead-letters tbody tr[data-letter]")
        expect(rows).to_have_count(3)
        page.select_option('select[name="handler"]', SHIP)
        page.fill('input[name="error"]', "CarrierDown")
        page.get_by_role("button", name="Filter").click()
        expect(rows).to_have_count(2)
        first = rows.first.get_attribute("data-letter")
        assert first == shop.letter_ids(handler=SHIP)[0]

        rows.first.get_by_role("link").click()
        expect(page.locator("#error")).to_contain_text("CarrierDown: the carrier refused order o-1")
        expect(page.locator("#body")).to_contain_text('"order_id": "o-1"')
        expect(page.locator("#headers")).to_contain_text("correlation_id")
        expect(page.locator("#traceback")).to_contain_text("raise CarrierDown(")

        page.get_by_role("button", name="Replay").click()
        expect(page.locator("#outcome")).to_contain_text("Replayed 1 dead letter(s).")
        expect(page.locator(f'tr[data-letter="{first}"]')).to_have_count(0)
        page.goto(f"{url}/")
        expect(shipping.locator("td.depth")).to_have_text("1")  # back on its channel

        result = shop.messaging.run("shipping")

        assert result.handled == 1
        assert shop.shipped() == ["o-1"]
        page.reload()
        expect(shipping.locator("td.depth")).to_have_text("0")
        expect(shipping.locator("td.dead")).to_have_text("1")
        page.goto(f"{url}/dead-letters")
        expect(rows).to_have_count(2)
        expect(page.locator(f'tr[data-letter="{first}"]')).to_have_count(0)
    assert first not in shop.letter_ids()


def test_many_dead_letters_are_replayed_or_deleted_at_once(shop: Shop, page: Page) -> None:
    with serving(dashboard_app(shop.messaging)) as url:
        page.goto(f"{url}/dead-letters?handler={SHIP}")
        rows = page.locator("#dead-letters tbody tr[data-letter]")
        expect(rows).to_have_count(2)
        page.check("#pick-all")
        page.get_by_role("button", name="Replay selected").click()
        expect(page.locator("#outcome")).to_contain_text("Replayed 2 dead letter(s).")
        expect(rows).to_have_count(0)  # the filter is kept: no letter of ship is left

        shop.messaging.run("shipping")
        assert sorted(shop.shipped()) == ["o-1", "o-2"]

        page.goto(f"{url}/dead-letters")
        expect(rows).to_have_count(1)
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Delete all").click()
        expect(page.locator("#outcome")).to_contain_text("Deleted 1 dead letter(s).")
        expect(page.locator("#no-letters")).to_be_visible()
    assert shop.letter_ids() == []


def test_a_delete_not_confirmed_deletes_nothing(shop: Shop, page: Page) -> None:
    with serving(dashboard_app(shop.messaging)) as url:
        page.goto(f"{url}/dead-letters")
        page.check("#pick-all")
        page.once("dialog", lambda dialog: dialog.dismiss())
        page.get_by_role("button", name="Delete selected").click()
        expect(page.locator("#outcome")).to_have_count(0)
    assert len(shop.letter_ids()) == 3


def test_the_handlers_page_shows_each_retry_policy(shop: Shop, page: Page) -> None:
    with serving(dashboard_app(shop.messaging)) as url:
        page.goto(f"{url}/handlers")
        ship = page.locator(f'tr[data-handler="{SHIP}"]')
        expect(ship).to_contain_text("1 instant, 0 delayed, on Exception")
        expect(ship).to_contain_text("on billing: 0 instant, 2 delayed (0.5s, 1s")
        invoice = page.locator('tr[data-handler="dashboard_shop.invoice"]')
        expect(invoice).to_contain_text("0 instant, 0 delayed, on Exception")
        invoice.get_by_role("link", name="1").click()
        expect(page.locator("#dead-letters tbody tr[data-letter]")).to_have_count(1)
        expect(page.locator("#dead-letters")).to_contain_text("KeyError")


def test_a_cross_site_form_post_is_refused(shop: Shop, page: Page) -> None:
    letter = shop.letter_ids()[0]
    with serving(dashboard_app(shop.messaging)) as url:
        page.goto(f"{url}/dead-letters")  # the victim has the dashboard's cookies
        html = f"""<form method="post" action="{url}/dead-letters/delete">
            <input name="id" value="{letter}"><input name="csrf" value="guessed"></form>
            <script>document.forms[0].submit()</script>"""
        with serving(_page_of(html), host="localhost") as elsewhere:
            with page.expect_response(f"{url}/dead-letters/delete") as sent:
                page.goto(elsewhere)
            response = sent.value
    assert response.status == 403
    assert "cross-site" in response.text()
    assert letter in shop.letter_ids()


def test_the_login_form_lets_in_who_has_the_token(shop: Shop, page: Page) -> None:
    with serving(dashboard_app(shop.messaging, token="open sesame")) as url:
        response = page.goto(f"{url}/dead-letters")
        assert response is not None and response.status == 401
        page.fill('input[name="token"]', "open says me")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#wrong-token")).to_be_visible()
        page.fill('input[name="token"]', "open sesame")
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(f"{url}/dead-letters")
        expect(page.locator("#dead-letters tbody tr[data-letter]")).to_have_count(3)
        page.get_by_role("button", name="Sign out").click()
        response = page.goto(f"{url}/")
        assert response is not None and response.status == 401


def test_read_only_shows_no_actions(shop: Shop, page: Page) -> None:
    with serving(dashboard_app(shop.messaging, read_only=True)) as url:
        page.goto(f"{url}/dead-letters")
        expect(page.locator("#dead-letters tbody tr[data-letter]")).to_have_count(3)
        expect(page.locator("input.pick")).to_have_count(0)
        expect(page.get_by_role("button", name="Replay selected")).to_have_count(0)
        page.locator("#dead-letters tbody tr[data-letter] a").first.click()
        expect(page.locator("#traceback")).to_contain_text("Traceback")
        expect(page.get_by_role("button", name="Replay")).to_have_count(0)


def _page_of(html: str) -> object:
    """An ASGI app answering every request with ``html``: a page of another site."""
    from starlette.responses import HTMLResponse

    return HTMLResponse(html)
