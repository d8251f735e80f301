"""`return_to`: generated variants of every trick, refused cleanly (never an error), and
whatever is accepted provably lands under the allow-listed prefix.

The oracle for "lands under the prefix" is independent of the rule: the URL must be
plain ASCII, its host and port those of the entry, and its path, decoded as a lenient
back end would (repeatedly, `;` parameters cut off), normalised, still under the
entry's path.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.brokers import Broker
from token_broker.services.return_to import return_to_allowed
from token_broker.settings import Settings

ALLOWED = ("https://app.example/connected", "http://127.0.0.1:8080/done/")

# Pieces that have fooled URL checks somewhere: dot segments in every encoding, path
# parameters, delimiters and their full-width or NFKC look-alikes, credentials, IPv6
# brackets, ports, controls and whitespace.
PIECES = [
    "/", ".", "..", "%2e", "%2E", "%252e", "%25252e", ".%2e", "%2e.", "%c0%ae", "%e0%80%ae",
    "\uff0e", "\u2024", "\u3002", ";", "%3b", "%3B", "%253b", "\\", "%5c", "%5C", ":", "\uff1a",
    "#", "\uff03", "%23", "?", "\uff1f", "@", "%40", "\uff20", "[", "]", "::1", "//", "%2f",
    "%2F", "\u2215", "\u2044", "connected", "done", "x", "evil.example", "8080", "99999",
    "-1", "0x1f", "\t", "\n", "\x00", " ", "\u200b", "\u00a0", "%00", "%0a", "%20", "\u0430",
]  # fmt: skip
SUFFIX = st.lists(st.sampled_from(PIECES), max_size=8).map("".join)
AUTHORITY = st.one_of(
    st.sampled_from(["app.example", "APP.example", "127.0.0.1:8080", "app.example:443"]),
    st.builds(
        lambda host, port: f"{host}:{port}",
        st.sampled_from(["app.example", "127.0.0.1", "[::1]", "[::1", "::1]"]),
        st.one_of(st.integers(-10, 10**7).map(str), st.text(max_size=6)),
    ),
    st.builds(lambda user, host: f"{user}@{host}", st.text(max_size=8), st.just("app.example")),
    st.text(max_size=20),
)
CANDIDATES = st.one_of(
    st.builds(lambda entry, tail: entry + tail, st.sampled_from(ALLOWED), SUFFIX),
    st.builds(
        lambda scheme, authority, path: f"{scheme}://{authority}{path}",
        st.sampled_from(["https", "http", "HTTPS", "javascript", "ftp", "https:", ""]),
        AUTHORITY,
        st.builds(
            lambda head, tail: head + tail, st.sampled_from(["/connected", "/done/", ""]), SUFFIX
        ),
    ),
    st.text(max_size=40),
)


def lands_under_an_entry(url: str) -> bool:
    if not url.isascii() or not url.isprintable():
        return False
    parts = urlsplit(url)
    path = parts.path
    for _ in range(6):
        path = unquote(path)
    path = "/".join(segment.split(";")[0] for segment in path.split("/"))
    normalised = posixpath.normpath(path) if path else path
    for entry in ALLOWED:
        allowed = urlsplit(entry)
        prefix = allowed.path.rstrip("/")
        if (parts.scheme, parts.hostname, parts.port) == (
            allowed.scheme, allowed.hostname, allowed.port,
        ) and (normalised == prefix or normalised.startswith(prefix + "/")):  # fmt: skip
            return True
    return False


@given(CANDIDATES)
@settings(max_examples=2000, deadline=None, database=None)
@example("https://app.example:99999/connected")
@example("https://app.example:abc/connected")
@example("https://[::1/connected")
@example("https://app.example\uff1a443/connected")
@example("https://app.example/connected\uff03@evil.example")
@example("https://app.example/connected/..;/x")
@example("https://app.example/connected/%252e%252e/x")
@example("https://app.example/connected/%c0%ae%c0%ae/x")
def test_the_rule_never_errs_and_what_it_accepts_stays_under_the_prefix(candidate: str) -> None:
    if return_to_allowed(candidate, ALLOWED):
        assert lands_under_an_entry(candidate), candidate
        assert ";" not in unquote(unquote(urlsplit(candidate).path))


@given(tail=st.lists(st.sampled_from(["x", "deeper", "a-b", "%7Euser", "q"]), max_size=4))
@settings(max_examples=200, deadline=None, database=None)
def test_plain_paths_under_the_prefix_are_accepted(tail: list[str]) -> None:
    url = "https://app.example/connected" + "".join(f"/{part}" for part in tail) + "?tab=mail"
    assert return_to_allowed(url, ALLOWED)


async def test_the_api_refuses_them_with_400(
    broker_factory: Callable[[Settings], Any], settings_factory: Callable[..., Settings]
) -> None:
    broker: Broker = await broker_factory(settings_factory(return_to_allowlist=ALLOWED))
    headers = await broker.headers()

    @given(CANDIDATES)
    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    def collect(candidate: str) -> None:
        candidates.append(candidate)

    candidates: list[str] = []
    collect()
    for candidate in candidates:
        response = await broker.client.post(
            "/v1/authorizations", json={"return_to": candidate}, headers=headers
        )
        assert response.status_code in (201, 400, 422), (candidate, response.text[:200])
        if response.status_code == 400:
            assert response.json()["code"] == "return_to_not_allowed"
        if response.status_code == 201:
            assert lands_under_an_entry(candidate), candidate
