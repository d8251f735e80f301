"""Bodies past TOKEN_BROKER_MAX_BODY_BYTES are 413 however they are sent: a declared length
(any number of digits), or chunked with no length at all, in chunks of any size."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.support.brokers import Broker
from tests.support.servers import serve
from token_broker.settings import Settings

LIMIT = 2048
BODY_ROUTES = ["/v1/authorizations", "/v1/oauth/exchange"]
EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture
async def small(
    broker_factory: Callable[[Settings], Any], settings_factory: Callable[..., Settings]
) -> tuple[Broker, dict[str, str]]:
    broker = await broker_factory(settings_factory(max_body_bytes=LIMIT))
    return broker, await broker.headers()


def json_body(size: int) -> bytes:
    """A JSON object of exactly `size` bytes (at least 20)."""
    return b'{"login_hint": "' + b"a" * (size - 18) + b'"}'


def chunked(body: bytes, chunk: int) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), chunk):
            yield body[start : start + chunk]

    return chunks()


@given(
    route=st.sampled_from(BODY_ROUTES),
    size=st.integers(min_value=LIMIT + 1, max_value=LIMIT * 8),
    chunk=st.integers(min_value=1, max_value=LIMIT * 2),
)
@EXAMPLES
async def test_a_chunked_body_over_the_limit_is_413(
    small: tuple[Broker, dict[str, str]], route: str, size: int, chunk: int
) -> None:
    broker, headers = small
    response = await broker.client.post(
        route,
        content=chunked(json_body(size), chunk),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 413, response.text[:200]
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "payload_too_large"


@given(size=st.integers(min_value=20, max_value=LIMIT), chunk=st.integers(1, LIMIT))
@EXAMPLES
async def test_a_chunked_body_within_the_limit_is_read(
    small: tuple[Broker, dict[str, str]], size: int, chunk: int
) -> None:
    broker, headers = small
    response = await broker.client.post(
        "/v1/authorizations",
        content=chunked(json_body(size), chunk),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert response.status_code in (201, 422), response.text[:200]  # 422: login_hint too long


@given(
    declared=st.one_of(
        st.integers(min_value=LIMIT + 1, max_value=10**30).map(str),
        st.text(alphabet="0123456789", min_size=19, max_size=6000),
        st.just("9" * 5000),  # past Python's integer-string limit
        st.integers(min_value=LIMIT + 1, max_value=10**6).map(lambda n: "0" * 30 + str(n)),
    )
)
@EXAMPLES
async def test_any_declared_length_over_the_limit_is_413_before_reading(
    small: tuple[Broker, dict[str, str]], declared: str
) -> None:
    broker, headers = small
    significant = declared.lstrip("0")
    assume(len(significant) > 4 or int(significant or "0") > LIMIT)
    response = await broker.client.post(
        "/v1/authorizations",
        content=b"{}",
        headers={**headers, "Content-Type": "application/json", "Content-Length": declared},
    )
    assert response.status_code == 413, (declared[:40], response.text[:200])
    assert response.json()["code"] == "payload_too_large"


async def test_a_chunked_body_over_the_limit_through_a_real_server(
    small: tuple[Broker, dict[str, str]],
) -> None:
    broker, headers = small
    async with serve(broker.app, lifespan="off") as url, httpx.AsyncClient() as client:
        response = await client.post(
            f"{url}/v1/authorizations",
            content=chunked(json_body(LIMIT * 4), 100),
            headers={**headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json()["code"] == "payload_too_large"
        assert (await client.get(f"{url}/healthz")).status_code == 200
