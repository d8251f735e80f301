"""One scope-equivalence rule: `email` is `…/userinfo.email`, `profile` is `…/userinfo.profile`.

Google answers the long names whichever spelling was configured; the broker must neither
refuse a connect over the spelling nor show scopes in two spellings.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.flow import Live
from tests.support.hygiene import register_secret
from token_broker.scopes import USERINFO_EMAIL, USERINFO_PROFILE, google_names, missing

GMAIL = "https://www.googleapis.com/auth/gmail.readonly"
GOOGLE_SPELLING = ["openid", USERINFO_EMAIL, USERINFO_PROFILE, GMAIL]


@pytest.fixture(
    params=[
        {"required_scopes": ("email", GMAIL)},
        {"required_scopes": (USERINFO_EMAIL, "profile", GMAIL)},
        {"scopes": tuple(GOOGLE_SPELLING), "required_scopes": ("email", "profile", GMAIL)},
    ],
    ids=["required-short", "required-long-configured-short", "configured-long-required-short"],
)
def live_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(request.param)


async def test_any_spelling_of_a_required_scope_connects(live: Live) -> None:
    response = await live.connect()
    assert response.status_code == 200, response.text
    assert "Account connected" in response.text
    user = live.provider.state.users["alice@example.com"]
    account = await live.stored(user.sub)
    assert sorted(account.scopes.split()) == sorted(GOOGLE_SPELLING)
    issued = await live.broker.client.get(
        f"/v1/accounts/{user.sub}/access-token", headers=await live.headers()
    )
    register_secret(issued.json()["access_token"])
    assert sorted(issued.json()["scopes"]) == sorted(GOOGLE_SPELLING)


async def test_a_scope_really_missing_is_still_refused_and_only_it_is_named(live: Live) -> None:
    started = await live.start()
    answer = await live.consent(
        started["authorization_url"], granted_scopes=["openid", "email", "profile"]
    )
    response = await live.callback(answer)
    assert response.status_code == 403
    assert "scope_not_granted" in response.text
    # Only the Gmail scope is missing: email and profile were granted, by their long names.
    assert f"The user did not grant {GMAIL}; nothing was stored." in response.text


async def test_a_caller_may_request_either_spelling(live: Live) -> None:
    headers = await live.headers()
    for wanted in (["email"], [USERINFO_EMAIL]):
        response = await live.broker.client.post(
            "/v1/authorizations", json={"scopes": ["openid", *wanted]}, headers=headers
        )
        assert response.status_code == 201, response.text
        scope = parse_qs(urlsplit(response.json()["authorization_url"]).query)["scope"][0]
        # The configured spelling goes to Google, with the required scopes added.
        assert len(google_names(scope.split())) == len(scope.split())
        assert set(google_names(scope.split())) >= {"openid", USERINFO_EMAIL, GMAIL}


def test_the_rule() -> None:
    assert google_names(["email", USERINFO_EMAIL, "profile", "openid"]) == (
        USERINFO_EMAIL,
        USERINFO_PROFILE,
        "openid",
    )
    assert missing(["email", "profile", GMAIL], [USERINFO_EMAIL, USERINFO_PROFILE]) == [GMAIL]
    assert missing([USERINFO_EMAIL], ["email"]) == []
    assert missing(["https://mail.google.com/"], [GMAIL]) == ["https://mail.google.com/"]
