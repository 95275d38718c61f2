"""The admin works in a real browser: log in, see the theme, find a client."""
import pytest
from django.contrib.auth import get_user_model

from core.models import Client
from tests.browser import admin_login, screenshot

pytestmark = pytest.mark.django_db(transaction=True)


def test_admin_login_and_client_search_in_chromium(live_server, desktop_page):
    get_user_model().objects.create_superuser("boss", "boss@example.com", "pw-boss-123")
    Client.objects.create(name="Ada Lovelace", email="ada@example.com")
    Client.objects.create(name="Grace Hopper", email="grace@example.com")
    admin_login(desktop_page, live_server, "boss", "pw-boss-123")
    desktop_page.goto(f"{live_server.url}/admin/core/client/?q=ada")
    rows = desktop_page.locator("#result_list tbody tr")
    assert rows.count() == 1
    assert "Ada Lovelace" in rows.first.inner_text()
    # unfold's stylesheet was served and applied (a themed page, not bare HTML).
    assert desktop_page.evaluate("getComputedStyle(document.body).fontFamily").lower().find("inter") >= 0
    screenshot(desktop_page, "admin-client-search")
