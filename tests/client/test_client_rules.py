"""The client's own rules, pinned with respx: problems, retries, the token cache, streams."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

import token_broker.errors as broker_errors
import token_broker_client as client_module
from tests.client.broker_stub import BROKER, FAST, ndjson, problem
from token_broker_client import (
    AccountNotFound,
    AccountSuspended,
    BrokerClient,
    BrokerProblem,
    BrokerUnreachable,
    IncompleteStream,
    ReauthorizationRequired,
    SyncBrokerClient,
    TokenCache,
    UnexpectedResponse,
    UpstreamError,
    UpstreamUnavailable,
    ValidationFailed,
    problem_class,
)

TOKEN_PATH = "/v1/accounts/alice@example.com/access-token"


def token_answer(value: str = "ya29.client-test", expires_in: int = 3599) -> httpx.Response:
    return httpx.Response(200, json={
        "access_token": value, "token_type": "Bearer", "expires_at": "2030-01-01T00:00:00+00:00",
        "expires_in": expires_in, "scopes": ["https://www.googleapis.com/auth/gmail.readonly"],
    })  # fmt: skip


def every_broker_problem() -> list[type[broker_errors.BrokerError]]:
    found: list[type[broker_errors.BrokerError]] = []
    pending = [broker_errors.BrokerError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("server_class", every_broker_problem(), ids=lambda c: c.code)
def test_every_problem_code_of_the_broker_has_its_exception(
    server_class: type[broker_errors.BrokerError],
) -> None:
    client_class = problem_class(server_class.code)
    assert client_class is not BrokerProblem, f"add a class for {server_class.code!r}"
    assert client_class.code == server_class.code
    assert client_class.__name__ in client_module.__all__
    assert client_class.__doc__, f"say in {client_class.__name__}'s docstring what it means"


def test_a_problem_becomes_its_exception_with_everything_the_broker_said() -> None:
    url = "https://accounts.example/auth?login_hint=alice%40example.com"
    answer = problem("reauthorization_required", 409, authorization_url=url)
    raised = client_module._errors.problem_from_response(answer, answer.content)
    assert isinstance(raised, ReauthorizationRequired)
    assert raised.authorization_url == url
    assert raised.status == 409
    assert raised.request_id == "req-1"
    assert raised.detail == "reauthorization_required happened"
    assert "409 reauthorization_required" in str(raised)
    assert not raised.retryable


def test_retry_after_unknown_codes_and_non_problems() -> None:
    answer = problem("upstream_unavailable", 503, retry_after=7)
    raised = client_module._errors.problem_from_response(answer, answer.content)
    assert isinstance(raised, UpstreamUnavailable)
    assert raised.retry_after == 7
    assert raised.retryable

    future = problem("quota_exhausted", 429, retry_after=3, quota="gmail")
    unknown = client_module._errors.problem_from_response(future, future.content)
    assert type(unknown) is BrokerProblem
    assert unknown.problem_code == "quota_exhausted"
    assert unknown.problem["quota"] == "gmail"
    assert unknown.retry_after == 3

    html = httpx.Response(
        502, text="<html>Bad gateway</html>", headers={"content-type": "text/html"}
    )
    assert isinstance(
        client_module._errors.problem_from_response(html, html.content), UnexpectedResponse
    )

    invalid = problem("validation_failed", 422, errors=[{"loc": ["query", "limit"], "msg": "bad"}])
    validation = client_module._errors.problem_from_response(invalid, invalid.content)
    assert isinstance(validation, ValidationFailed)
    assert validation.errors == [{"loc": ["query", "limit"], "msg": "bad"}]


def test_retry_after_is_honoured(broker_api: respx.MockRouter) -> None:
    route = broker_api.get(TOKEN_PATH).mock(
        side_effect=[problem("upstream_unavailable", 503, retry_after=1), token_answer()]
    )
    with SyncBrokerClient(BROKER, "tbk_test", retry=FAST) as broker:
        started = time.monotonic()
        token = broker.access_token("alice@example.com")
        assert time.monotonic() - started >= 1.0
    assert token.access_token == "ya29.client-test"
    assert route.call_count == 2


async def test_retries_are_bounded_by_attempts_and_budget(broker_api: respx.MockRouter) -> None:
    always = broker_api.get(TOKEN_PATH).mock(return_value=problem("database_unavailable", 503))
    async with BrokerClient(BROKER, "tbk_test", retry=FAST) as broker:
        with pytest.raises(BrokerProblem) as raised:
            await broker.access_token("alice@example.com")
    assert raised.value.problem_code == "database_unavailable"
    assert always.call_count == 3

    # A Retry-After longer than the budget: given up at once, the wait handed to the caller.
    broker_api.get("/v1/accounts/bob@example.com/access-token").mock(
        return_value=problem("upstream_unavailable", 503, retry_after=120)
    )
    async with BrokerClient(BROKER, "tbk_test", retry=FAST) as broker:
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable) as late:
            await broker.access_token("bob@example.com")
        assert time.monotonic() - started < 1
    assert late.value.retry_after == 120


async def test_what_is_not_retried(broker_api: respx.MockRouter) -> None:
    missing = broker_api.get(TOKEN_PATH).mock(return_value=problem("account_not_found", 404))
    broken = broker_api.get("/v1/accounts/x/messages").mock(
        return_value=problem("upstream_error", 502, gmail_reason="failedPrecondition")
    )
    exchange = broker_api.post("/v1/oauth/exchange").mock(
        return_value=problem("upstream_unavailable", 503, retry_after=1)
    )
    start = broker_api.post("/v1/authorizations").mock(
        side_effect=[
            problem("rate_limited", 429, retry_after=0),
            httpx.Response(201, json={"id": "0b5e", "authorization_url": "https://a.example/auth",
                                      "state": "s", "expires_at": "2030-01-01T00:00:00Z"}),
        ]
    )  # fmt: skip
    async with BrokerClient(BROKER, "tbk_test", retry=FAST) as broker:
        with pytest.raises(AccountNotFound):
            await broker.access_token("alice@example.com")
        with pytest.raises(UpstreamError) as upstream:
            await broker.list_messages("x")
        assert upstream.value.problem["gmail_reason"] == "failedPrecondition"
        # A code may already have been spent: a 503 on an exchange is not repeated...
        with pytest.raises(UpstreamUnavailable):
            await broker.exchange_code("4/0Acode")
        # ...but a request refused before any work (the client's rate limit) is.
        started = await broker.start_authorization(login_hint="alice@example.com")
    assert started.authorization_url == "https://a.example/auth"
    assert (missing.call_count, broken.call_count, exchange.call_count) == (1, 1, 1)
    assert start.call_count == 2
    assert json.loads(exchange.calls[0].request.content) == {"code": "4/0Acode"}


async def test_an_unreachable_broker_is_retried_then_reported(
    broker_api: respx.MockRouter,
) -> None:
    refused = broker_api.get(TOKEN_PATH).mock(side_effect=httpx.ConnectError("refused"))
    async with BrokerClient(BROKER, "tbk_test", retry=FAST) as broker:
        with pytest.raises(BrokerUnreachable) as raised:
            await broker.access_token("alice@example.com")
    assert refused.call_count == 3
    assert not raised.value.request_sent


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_token_cache_respects_min_ttl_and_expiry(broker_api: respx.MockRouter) -> None:
    route = broker_api.get(TOKEN_PATH).mock(
        side_effect=[token_answer("ya29.one", 600), token_answer("ya29.two", 600),
                     token_answer("ya29.three", 600), token_answer("ya29.four", 600)]
    )  # fmt: skip
    clock = Clock()
    cache = TokenCache(clock=clock)
    async with BrokerClient(BROKER, "tbk_test", token_cache=cache) as broker:
        first = await broker.access_token("alice@example.com")
        assert route.calls[0].request.url.params["min_ttl"] == "300"
        assert route.calls[0].request.headers["authorization"] == "Bearer tbk_test"
        clock.now += 250  # 350 s left: enough for the default min_ttl of 300
        cached = await broker.access_token("alice@example.com")
        assert cached.access_token == first.access_token == "ya29.one"
        assert cached.expires_in == 350
        assert route.call_count == 1
        # Asking for more time than is left goes to the broker, with that min_ttl.
        longer = await broker.access_token("alice@example.com", min_ttl=400)
        assert longer.access_token == "ya29.two"
        assert route.calls[1].request.url.params["min_ttl"] == "400"
        # Never past expiry, even with min_ttl=0.
        clock.now += 600
        expired = await broker.access_token("alice@example.com", min_ttl=0)
        assert expired.access_token == "ya29.three"
        forced = await broker.access_token("alice@example.com", force_refresh=True)
        assert forced.access_token == "ya29.four"
        assert route.calls[3].request.url.params["force_refresh"] == "true"
    assert route.call_count == 4


@pytest.mark.parametrize(
    ("code", "raised"),
    [
        ("reauthorization_required", ReauthorizationRequired),
        ("account_suspended", AccountSuspended),
    ],
)
async def test_a_dead_grant_empties_the_cache_entry(
    broker_api: respx.MockRouter, code: str, raised: type[BrokerProblem]
) -> None:
    route = broker_api.get(TOKEN_PATH).mock(
        side_effect=[token_answer(), problem(code, 409, authorization_url="https://a.example/auth"),
                     problem(code, 409, authorization_url="https://a.example/auth")]
    )  # fmt: skip
    async with BrokerClient(BROKER, "tbk_test") as broker:
        await broker.access_token("alice@example.com")
        with pytest.raises(raised):
            await broker.access_token("alice@example.com", force_refresh=True)
        with pytest.raises(raised):
            await broker.access_token("alice@example.com")
    assert route.call_count == 3


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    clock = Clock()
    cache = TokenCache(max_accounts=2, clock=clock)
    token = client_module.AccessToken.from_json(token_answer().json())
    for account in ("a", "b"):
        cache.put(account, token, requested_at=clock.now)
    assert cache.get("a", 0) is not None
    cache.put("c", token, requested_at=clock.now)
    assert cache.get("b", 0) is None
    assert cache.get("a", 0) is not None
    assert cache.get("c", 0) is not None


MESSAGES = [{"id": f"m{i}", "threadId": f"t{i}"} for i in range(3)]
COMPLETE = {"status": "complete", "count": 3, "pages": 1, "result_size_estimate": 3}


async def test_a_complete_stream_gives_every_item_and_its_summary(
    broker_api: respx.MockRouter,
) -> None:
    route = broker_api.get("/v1/accounts/alice@example.com/messages").mock(
        return_value=httpx.Response(200, content=ndjson(*MESSAGES, COMPLETE))
    )
    async with BrokerClient(BROKER, "tbk_test") as broker:
        stream = broker.stream_messages("alice@example.com", q="from:bob", label_ids=["INBOX"])
        items = await stream.collect()
    assert [(m.id, m.thread_id) for m in items] == [("m0", "t0"), ("m1", "t1"), ("m2", "t2")]
    assert stream.summary == client_module.ListingSummary(count=3, pages=1, result_size_estimate=3)
    request = route.calls[0].request
    assert request.headers["accept"] == "application/x-ndjson"
    assert request.url.params.multi_items() == [("q", "from:bob"), ("labelIds", "INBOX")]


@pytest.mark.parametrize(
    ("body", "received", "error"),
    [
        (ndjson(*MESSAGES), 3, IncompleteStream),  # no final line
        (ndjson(*MESSAGES, {**COMPLETE, "count": 4}), 3, IncompleteStream),  # a line lost
        (ndjson(*MESSAGES)[:-9], 2, IncompleteStream),  # cut in the middle of a line
        (ndjson(*MESSAGES)[:-9] + b"\n" + ndjson(COMPLETE), 2, UnexpectedResponse),  # garbled
    ],
    ids=["no-final-line", "count-disagrees", "cut-mid-line", "garbled-line"],
)
def test_a_stream_without_its_final_line_is_incomplete(
    broker_api: respx.MockRouter, body: bytes, received: int, error: type[Exception]
) -> None:
    broker_api.get("/v1/accounts/alice@example.com/messages").mock(
        return_value=httpx.Response(200, content=body)
    )
    with SyncBrokerClient(BROKER, "tbk_test") as broker:
        stream = broker.stream_messages("alice@example.com")
        seen: list[str] = []

        def read() -> None:
            seen.extend(message.id for message in stream)

        with pytest.raises(error):
            read()
        assert len(seen) == received
        assert stream.summary is None
        assert stream.received == received


def test_a_failed_stream_raises_its_problem_after_the_items_that_arrived(
    broker_api: respx.MockRouter,
) -> None:
    failure = {"status": "failed", "count": 3, "pages": 1, "error": {
        "type": "urn:token-broker:problem:reauthorization_required", "status": 409,
        "code": "reauthorization_required", "detail": "revoked",
        "authorization_url": "https://a.example/auth"}}  # fmt: skip
    broker_api.get("/v1/accounts/alice@example.com/messages").mock(
        return_value=httpx.Response(200, content=ndjson(*MESSAGES, failure))
    )
    with (
        SyncBrokerClient(BROKER, "tbk_test") as broker,
        broker.stream_messages("alice@example.com") as stream,
    ):
        seen: list[str] = []

        def read() -> None:
            seen.extend(message.id for message in stream)

        with pytest.raises(ReauthorizationRequired) as raised:
            read()
    assert seen == ["m0", "m1", "m2"]
    assert raised.value.authorization_url == "https://a.example/auth"


class BreaksAfterOneLine(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield ndjson(MESSAGES[0])
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message")


async def test_a_broken_connection_mid_stream_is_incomplete() -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, stream=BreaksAfterOneLine()))
    async with (
        httpx.AsyncClient(transport=transport) as http,
        BrokerClient(BROKER, "tbk_test", http=http) as broker,
    ):
        with pytest.raises(IncompleteStream) as raised:
            await broker.stream_messages("alice@example.com").collect()
    assert raised.value.received == 1
    assert "RemoteProtocolError" in str(raised.value)


async def test_a_stream_refused_before_its_first_line_is_retried_then_read(
    broker_api: respx.MockRouter,
) -> None:
    route = broker_api.get("/v1/accounts/alice@example.com/messages").mock(
        side_effect=[problem("upstream_rate_limited", 429, retry_after=0),
                     httpx.Response(200, content=ndjson(*MESSAGES, COMPLETE))]
    )  # fmt: skip
    async with BrokerClient(BROKER, "tbk_test", retry=FAST) as broker:
        assert len(await broker.stream_messages("alice@example.com").collect()) == 3
    assert route.call_count == 2


def test_nothing_secret_in_reprs() -> None:
    broker = SyncBrokerClient(BROKER, "tbk_secret-key")
    token = client_module.AccessToken.from_json(token_answer("ya29.secret-token").json())
    assert "tbk_secret-key" not in repr(broker)
    assert "ya29.secret-token" not in repr(token)
    broker.close()


def test_accounts_are_escaped_in_paths(broker_api: respx.MockRouter) -> None:
    route = broker_api.get(url__regex=r".*/v1/accounts/.*").mock(
        return_value=problem("account_not_found", 404)
    )
    with SyncBrokerClient(BROKER, "tbk_test") as broker, pytest.raises(AccountNotFound):
        broker.get_account("a+b/c@example.com")
    assert route.calls[0].request.url.raw_path == b"/v1/accounts/a%2Bb%2Fc@example.com"
