"""Security headers and Content-Security-Policy on the public and portal pages, the admin's own
policy, and the admin sign-in throttling (django-axes)."""
from __future__ import annotations

import re
from decimal import Decimal
from urllib.parse import urlsplit

import pytest
from django.contrib.auth import get_user_model

from core.portal_tokens import portal_token_for

pytestmark = pytest.mark.django_db

CSP = "Content-Security-Policy"
# An inline event handler attribute (onclick=, onsubmit=...): the policy refuses to run them.
INLINE_HANDLER = re.compile(r"<[^>]*\son[a-z]+\s*=", re.I)
TAG = re.compile(r"<(script|style)\b([^>]*)>", re.I)


def directives(response, header=CSP) -> dict[str, list[str]]:
    policy = response[header]
    parsed = {}
    for part in policy.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


def assert_strict_page(response):
    """The public pages' promises: strict CSP, inline code only with this response's nonce."""
    assert response.status_code == 200, response.status_code
    policy = directives(response)
    assert policy["default-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert "'self'" in policy["form-action"] and "https://checkout.stripe.com" in policy["form-action"]
    for directive in ("script-src", "style-src"):
        assert "'unsafe-inline'" not in policy[directive] and "'unsafe-eval'" not in policy[directive]
    nonces = {value for value in policy["script-src"] if value.startswith("'nonce-")}
    assert len(nonces) == 1 and policy["style-src"] == ["'self'", *nonces]
    nonce = nonces.pop()[len("'nonce-"):-1]

    body = response.content.decode()
    assert not INLINE_HANDLER.search(body), INLINE_HANDLER.search(body).group(0)
    for tag, attributes in TAG.findall(body):
        assert f'nonce="{nonce}"' in attributes, f"<{tag}{attributes}> has no nonce"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"
    assert "camera=()" in response["Permissions-Policy"] and "geolocation=()" in response["Permissions-Policy"]
    return nonce


@pytest.fixture
def ten(make_pack, massage):
    return make_pack([(massage, False, 10)], name="Ten massages", price=Decimal("300.00"), currency="GBP")


def test_pack_page_has_a_strict_policy_and_a_fresh_nonce_each_time(client, ten, settings):
    settings.STRIPE_TEST_DOUBLE = True
    first = assert_strict_page(client.get("/packs/"))
    second = assert_strict_page(client.get("/packs/"))
    assert first != second
    body = client.get("/packs/").content.decode()
    assert "data-submit-once" in body  # the double-tap guard, now in the nonce'd script


def test_test_checkout_page_keeps_its_strict_policy(client, ten, settings):
    settings.STRIPE_TEST_DOUBLE = True
    response = client.post(f"/packs/{ten.pk}/buy/", {"name": "Mary Shelley", "email": "mary@example.com"})
    assert response.status_code in (302, 303)
    checkout = client.get(urlsplit(response["Location"]).path)
    assert_strict_page(checkout)
    assert 'id="pay-form" data-submit-once' in checkout.content.decode()


def test_portal_pages_have_the_strict_policy(client, client_a, massage, make_pack, sell):
    sell(client_a, make_pack([(massage, False, 3)]))
    token = portal_token_for(client_a)
    for path in ("/me/link/", f"/me/{token}/", f"/me/{token}/book/"):
        assert_strict_page(client.get(path))


def test_stripe_can_not_be_framed_nor_the_webhook_answer_sniffed(client):
    response = client.get("/stripe/webhook/")  # 405, still with the headers
    assert response["X-Content-Type-Options"] == "nosniff"
    assert directives(response)["frame-ancestors"] == ["'none'"]


def test_admin_has_its_own_enforced_policy(client):
    response = client.get("/admin/login/")
    assert response.status_code == 200
    policy = directives(response)
    # unfold needs inline scripts and Alpine's eval; the rest stays locked down.
    assert "'unsafe-inline'" in policy["script-src"] and "'unsafe-eval'" in policy["script-src"]
    assert policy["default-src"] == ["'self'"] and policy["frame-ancestors"] == ["'none'"]
    assert policy["form-action"] == ["'self'"] and policy["object-src"] == ["'none'"]
    assert not any(value.startswith("'nonce-") for value in policy["script-src"])
    assert "Content-Security-Policy-Report-Only" not in response


# --- Admin sign-in throttling ---------------------------------------------------------------------

LOGIN = "/admin/login/"


def sign_in(client, username, password, ip="203.0.113.7"):
    return client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"}, REMOTE_ADDR=ip)


@pytest.fixture
def desk(db):
    return get_user_model().objects.create_user("frontdesk", "fd@example.com", "right-pw-123", is_staff=True)


@pytest.fixture
def other(db):
    return get_user_model().objects.create_user("manager", "mg@example.com", "other-pw-456", is_staff=True)


def test_sixth_attempt_after_five_wrong_passwords_is_refused_even_with_the_right_one(client, desk, settings):
    assert settings.AXES_FAILURE_LIMIT == 5
    for _ in range(4):
        response = sign_in(client, "frontdesk", "wrong")
        assert response.status_code == 200  # the usual "enter a correct username and password"
    assert sign_in(client, "frontdesk", "wrong").status_code == 429  # the fifth locks

    response = sign_in(client, "frontdesk", "right-pw-123")

    assert response.status_code == 429
    text = response.content.decode()
    assert "Too many failed sign-ins for this username" in text and "15 minutes" in text
    assert 'id="login-form"' in text  # the admin's own sign-in page, with the reason on it
    assert "_auth_user_id" not in client.session
    assert client.get("/admin/").status_code == 302  # not signed in


def test_a_lockout_touches_neither_other_users_nor_other_addresses(client, desk, other):
    for _ in range(5):
        sign_in(client, "frontdesk", "wrong")
    assert sign_in(client, "frontdesk", "right-pw-123").status_code == 429

    assert sign_in(client, "manager", "other-pw-456").status_code == 302  # same address, other user
    client.logout()
    assert sign_in(client, "frontdesk", "right-pw-123", ip="198.51.100.9").status_code == 302  # elsewhere


def test_a_successful_sign_in_resets_the_count(client, desk):
    for _ in range(4):
        sign_in(client, "frontdesk", "wrong")
    assert sign_in(client, "frontdesk", "right-pw-123").status_code == 302
    client.logout()
    for _ in range(4):
        assert sign_in(client, "frontdesk", "wrong").status_code == 200
    assert sign_in(client, "frontdesk", "right-pw-123").status_code == 302  # 8 failures, never 5 in a row


def test_the_lockout_follows_the_client_address_behind_the_proxy(client, desk, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    for _ in range(5):
        client.post(LOGIN, {"username": "frontdesk", "password": "wrong"},
                    REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.7")
    # Another client behind the same proxy can still sign in as that user.
    response = client.post(LOGIN, {"username": "frontdesk", "password": "right-pw-123", "next": "/admin/"},
                           REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.9")
    assert response.status_code == 302


# --- In a real browser: nothing the policy refuses, and the pages still work ----------------------

WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));
"""


def violations(page) -> list[str]:
    return page.evaluate("window.__csp")


@pytest.mark.django_db(transaction=True)
def test_in_a_browser_the_public_pages_and_the_admin_break_no_rule(
    live_server, browser, settings, make_pack, massage, django_user_model
):
    from tests.browser import admin_login, screenshot

    settings.STRIPE_TEST_DOUBLE = True
    settings.PUBLIC_BASE_URL = live_server.url
    pack = make_pack([(massage, False, 10)], name="10 massages", price=Decimal("300.00"))
    context = browser.new_context(viewport={"width": 360, "height": 740})
    context.add_init_script(WATCH_CSP)
    page = context.new_page()
    page.set_default_timeout(15_000)
    console = []
    page.on("console", lambda message: console.append(message.text))

    page.goto(f"{live_server.url}/packs/")
    card = page.locator(f"#pack-{pack.pk}")
    card.get_by_text("Buy this pack").click()
    card.get_by_label("Your name").fill("Mary Shelley")
    card.get_by_label("Email").fill("mary@example.com")
    assert violations(page) == []
    # The double-tap guard (a nonce'd script now, not onsubmit=): the button is disabled on submit.
    page.evaluate("document.addEventListener('submit', (e) => e.preventDefault())")
    card.get_by_role("button", name="Continue to payment").click()
    assert card.get_by_role("button", name="Continue to payment").is_disabled()
    page.evaluate("window.location.reload()")
    page.wait_for_load_state()

    card = page.locator(f"#pack-{pack.pk}")
    card.get_by_text("Buy this pack").click()
    card.get_by_label("Your name").fill("Mary Shelley")
    card.get_by_label("Email").fill("mary@example.com")
    card.get_by_role("button", name="Continue to payment").click()
    page.wait_for_url("**/packs/test-checkout/**")  # form-action allowed the post and its redirect
    badge = page.locator(".top .badge.test")
    gap = badge.evaluate(
        "el => { const box = el.parentElement; return box.getBoundingClientRect().right"
        " - parseFloat(getComputedStyle(box).paddingRight) - el.getBoundingClientRect().right; }"
    )
    assert abs(gap) < 2  # the TEST MODE badge still sits at the right end of the bar (a CSS rule now)
    screenshot(page, "csp-test-checkout")
    assert violations(page) == []

    django_user_model.objects.create_superuser("csp-admin", "csp@example.com", "csp-pw-123")
    admin = context.new_page()
    admin.set_default_timeout(15_000)
    admin.on("console", lambda message: console.append(message.text))
    admin_login(admin, live_server, "csp-admin", "csp-pw-123")
    for path in ("/admin/", "/admin/core/client/", "/admin/payments/purchase/"):
        admin.goto(f"{live_server.url}{path}")
        admin.wait_for_load_state("networkidle")
        assert violations(admin) == [], path
    screenshot(admin, "csp-admin-dashboard")

    # The lockout page is the admin's own sign-in page, styled, with the reason on it.
    django_user_model.objects.create_user("csp-desk", "desk@example.com", "desk-pw-123", is_staff=True)
    locked = browser.new_page(viewport={"width": 1024, "height": 800})
    for attempt in range(5):
        locked.goto(f"{live_server.url}/admin/login/")
        locked.fill("input[name=username]", "csp-desk")
        locked.fill("input[name=password]", "not-it")
        locked.click("button[type=submit]")
        locked.wait_for_load_state()
    assert "Too many failed sign-ins for this username" in locked.inner_text("body")
    assert locked.locator("input[name=password]").is_visible()
    screenshot(locked, "admin-sign-in-locked")
    locked.close()

    assert not [text for text in console if "Content Security Policy" in text], console
    context.close()
