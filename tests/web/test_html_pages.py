"""Every HTML answer is protected: a strict Content-Security-Policy, nosniff, no-referrer,
nothing inline, and no code or state in any URL a page (or a redirect) leads to.

Generated connect flows end in every page the callback and the link route can show
(connected, denied, a scope unticked, a bad or replayed code, a forged state, another
issuer, broken links), with and without `return_to`; every HTML answer is checked the
same way. The middleware itself is checked against generated pages that send no policy,
a weak one, or a strict one of their own.
"""

from __future__ import annotations

import secrets
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.flow import Live
from tests.support.hygiene import register_secret
from token_broker.web.html_headers import STRICT_POLICY, HtmlSecurityHeaders, is_strict

RETURN_TO = "https://app.example/connected"
GMAIL = "https://www.googleapis.com/auth/gmail.readonly"


class Page(HTMLParser):
    """What a page could run inline or lead to."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script" and not values.get("src"):
            self.inline.append("inline <script>")
        if tag == "style":
            self.inline.append("<style>")
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.inline.append(f"{tag} {name}=")
            if name in ("href", "src", "action", "formaction", "content") and value:
                self.urls.append(value)


def policy_directives(policy: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = [w.lower() for w in words[1:]]
    return directives


def assert_strict(policy: str) -> None:
    """An oracle written apart from the middleware's own check."""
    directives = policy_directives(policy)
    assert directives.get("frame-ancestors") == ["'none'"], policy
    scripts = directives.get("script-src", directives.get("default-src"))
    assert scripts is not None, policy
    assert set(scripts) <= {"'self'", "'none'"}, policy
    styles = directives.get("style-src", directives.get("default-src"))
    assert styles is not None, policy
    assert set(styles) <= {"'self'", "'none'"}, policy
    assert "'unsafe-inline'" not in policy.lower()
    assert "'unsafe-eval'" not in policy.lower()


def assert_protected(response: httpx.Response, *, secrets_in_play: list[str]) -> None:
    for value in secrets_in_play:
        assert value not in response.headers.get("location", ""), "a redirect carries it"
    location = response.headers.get("location")
    if location is not None:
        assert not {"code", "state"} & set(parse_qs(urlsplit(location).query)), location
    if not response.headers.get("content-type", "").startswith("text/html"):
        return
    assert_strict(response.headers["content-security-policy"])
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    page = Page()
    page.feed(response.text)
    assert page.inline == [], page.inline
    for url in page.urls:
        assert not {"code", "state"} & set(parse_qs(urlsplit(url).query)), url
        for value in secrets_in_play:
            assert value not in url


OUTCOMES = st.sampled_from(
    ["connected", "denied", "unticked", "bad_code", "replayed", "forged_state", "other_issuer",
     "provider_error", "no_parameters", "bad_link", "empty_link"]
)  # fmt: skip


@given(
    outcome=OUTCOMES,
    return_to=st.booleans(),
    extra=st.dictionaries(
        st.sampled_from(["scope", "authuser", "prompt", "hd"]), st.text(max_size=20), max_size=2
    ),
)
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
async def test_every_page_of_the_connect_flow_is_protected(
    live: Live, outcome: str, return_to: bool, extra: dict[str, str]
) -> None:
    client = live.broker.client
    if outcome in ("bad_link", "empty_link"):
        link = "" if outcome == "empty_link" else secrets.token_urlsafe(40)
        response = await client.get("/v1/oauth/reauthorize", params={"link": link})
        assert response.status_code == 400
        assert_protected(response, secrets_in_play=[])
        return
    if outcome == "no_parameters":
        assert_protected(await client.get("/v1/oauth/callback"), secrets_in_play=[])
        return
    started = await live.start(
        login_hint="alice@example.com", **({"return_to": RETURN_TO} if return_to else {})
    )
    state = register_secret(started["state"])
    kwargs: dict[str, Any] = {}
    if outcome == "denied":
        kwargs["decision"] = "deny"
    if outcome == "unticked":
        kwargs["granted_scopes"] = ["openid", "email", "profile"]
    answer = await live.consent(started["authorization_url"], **kwargs)
    code = answer.get("code", "")
    params = {k: v for k, v in answer.items() if not k.startswith("_")} | extra
    if outcome == "bad_code":
        params["code"] = code + "x"
    if outcome == "forged_state":
        params["state"] = secrets.token_urlsafe(32)
    if outcome == "other_issuer":
        params["iss"] = "https://evil.example"
    if outcome == "provider_error":
        params.pop("code", None)
        params["error"] = "server_error"
    response = await client.get("/v1/oauth/callback", params=params)
    if outcome == "replayed":
        response = await client.get("/v1/oauth/callback", params=params)
    assert response.status_code < 500, response.text[:300]
    assert_protected(response, secrets_in_play=[value for value in (code, state) if value])


async def test_docs_pages_get_the_headers_too(live: Live) -> None:
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        response = await live.broker.client.get(path)
        if response.status_code == 404:
            continue
        assert response.headers["content-type"].startswith("text/html")
        assert_strict(response.headers["content-security-policy"])
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"


SOURCES = st.sampled_from(
    ["'self'", "'none'", "'unsafe-inline'", "'unsafe-eval'", "*", "https:", "data:",
     "https://cdn.example", "'sha256-abc'", "'strict-dynamic'", "http://*:*"]
)  # fmt: skip
DIRECTIVES = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "default-src",
                "script-src",
                "style-src",
                "img-src",
                "frame-ancestors",
                "connect-src",
                "base-uri",
                "FRAME-ANCESTORS",
            ]
        ),
        st.lists(SOURCES, max_size=3),
    ),
    max_size=6,
).map(lambda pairs: "; ".join(f"{name} {' '.join(values)}".strip() for name, values in pairs))


@given(
    own=st.one_of(st.none(), DIRECTIVES),
    media_type=st.sampled_from(
        ["text/html", "text/html; charset=utf-8", "TEXT/HTML", "application/json"]
    ),
    weak_headers=st.booleans(),
)
@settings(max_examples=300, deadline=None, database=None)
@example(
    own="script-src 'self' https://cdn.example; frame-ancestors 'none'",
    media_type="text/html",
    weak_headers=False,
)
@example(
    own="default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    media_type="text/html",
    weak_headers=True,
)
@example(
    own="default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    media_type="text/html",
    weak_headers=False,
)
async def test_no_html_route_can_forget_or_weaken_the_protections(
    own: str | None, media_type: str, weak_headers: bool
) -> None:
    app = FastAPI()
    headers = {"Content-Security-Policy": own} if own is not None else {}
    if weak_headers:
        headers |= {"Referrer-Policy": "unsafe-url", "X-Content-Type-Options": "sniff"}

    @app.get("/page")
    async def page() -> Any:
        if media_type == "application/json":
            return JSONResponse({}, headers=headers)
        return HTMLResponse("<p>hi</p>", headers=headers, media_type=media_type)

    @app.get("/mounted/page")
    async def mounted() -> HTMLResponse:
        return HTMLResponse("<style>p{}</style>")

    wrapped = HtmlSecurityHeaders(app, exempt_prefixes=("/mounted",))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=wrapped), base_url="http://test"
    ) as client:
        response = await client.get("/page")
        exempt = await client.get("/mounted/page")
    assert "content-security-policy" not in exempt.headers
    if media_type == "application/json":
        assert response.headers.get("content-security-policy") == own
        return
    assert_strict(response.headers["content-security-policy"])
    assert response.headers.get_list("content-security-policy") == [
        response.headers["content-security-policy"]
    ]
    assert response.headers.get_list("referrer-policy") == ["no-referrer"]
    assert response.headers.get_list("x-content-type-options") == ["nosniff"]
    if own is None:
        assert response.headers["content-security-policy"] == STRICT_POLICY


@pytest.mark.parametrize("path", ["/v1/oauth/callback", "/v1/oauth/reauthorize"])
async def test_redirects_from_the_browser_routes_keep_the_address_to_themselves(
    live: Live, path: str
) -> None:
    if path == "/v1/oauth/callback":
        started = await live.start(return_to=RETURN_TO)
        answer = await live.consent(started["authorization_url"])
        response = await live.callback(answer)
        assert_protected(response, secrets_in_play=[answer["code"], started["state"]])
    else:  # on to the provider, with a state of its own: the link itself stays here
        link = live.broker.state.connect.links.url(account_id=None, login_hint=None, client_id=None)
        response = await live.open_link(link)
        assert link.split("link=")[1] not in response.headers["location"]
    assert response.status_code == 303
    assert response.headers["referrer-policy"] == "no-referrer"


def test_a_page_may_send_its_own_policy_when_it_is_as_strict() -> None:
    # Swagger UI served offline needs its icons (data: images) and its OpenAPI document.
    offline_docs = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    assert is_strict(offline_docs)
    assert is_strict(STRICT_POLICY)
    fastapi_docs = (
        "script-src 'self' https://cdn.jsdelivr.net 'unsafe-inline'; frame-ancestors 'none'"
    )
    assert not is_strict(fastapi_docs)
