"""The client used as a service uses it, against a real `token-broker dev` process."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.client.conftest import APP_RETURN_TO, DevBroker
from tests.support.hygiene import register_secret
from token_broker_client import (
    AccessDenied,
    AccountNotFound,
    AuthorizationNotFound,
    BrokerClient,
    IncompleteStream,
    MessageRef,
    ReauthorizationRequired,
    SyncBrokerClient,
    Unauthenticated,
    problem_class,
)


def counting_client() -> tuple[httpx.AsyncClient, list[str]]:
    sent: list[str] = []

    async def record(request: httpx.Request) -> None:
        sent.append(f"{request.method} {request.url.path}")

    return httpx.AsyncClient(timeout=60, event_hooks={"request": [record]}), sent


async def test_tokens_come_from_the_broker_then_from_the_cache(dev_broker: DevBroker) -> None:
    dev_broker.connect("tokens@example.com")
    http, sent = counting_client()
    async with http, BrokerClient(dev_broker.url, dev_broker.api_key, http=http) as broker:
        first = await broker.access_token("tokens@example.com")
        register_secret(first.access_token)
        assert first.token_type == "Bearer"
        assert first.expires_in > 300
        assert "https://www.googleapis.com/auth/gmail.readonly" in first.scopes
        again = await broker.access_token("tokens@example.com")
        assert again.access_token == first.access_token
        assert sent == ["GET /v1/accounts/tokens@example.com/access-token"]

        forced = await broker.access_token("tokens@example.com", force_refresh=True)
        register_secret(forced.access_token)
        assert forced.access_token != first.access_token
        assert len(sent) == 2
        assert first.access_token not in repr(first)

        # The token is Google's: the sandbox's Gmail takes it.
        gmail = await http.get(
            f"{dev_broker.sandbox}/gmail/v1/users/me/messages",
            headers={"Authorization": f"Bearer {forced.access_token}"},
        )
        assert gmail.status_code == 200

        account = await broker.get_account("tokens@example.com")
        assert account.status == "active"
        assert account.email == "tokens@example.com"
        listed = [a async for a in broker.iter_accounts(email="tokens@example.com")]
        assert [a.id for a in listed] == [account.id]
        started = await broker.start_authorization(login_hint="someone@example.com")
        assert started.authorization_url.startswith(f"{dev_broker.sandbox}/o/oauth2/v2/auth?")

        with pytest.raises(AccountNotFound) as missing:
            await broker.access_token("nobody@example.com")
        assert missing.value.status == 404
        assert missing.value.request_id


async def test_a_25000_message_mailbox_streams_completely(dev_broker: DevBroker) -> None:
    dev_broker.connect("bob@example.com")
    async with BrokerClient(dev_broker.url, dev_broker.api_key) as broker:
        ids: set[str] = set()
        async with broker.stream_messages("bob@example.com", include_spam_trash=True) as stream:
            async for message in stream:
                assert isinstance(message, MessageRef)
                ids.add(message.id)
        assert stream.summary is not None
        assert len(ids) == stream.received == stream.summary.count == 25_000
        assert stream.summary.pages == 50


def test_the_sync_client_lists_streams_and_collects(dev_broker: DevBroker) -> None:
    dev_broker.connect("sync@example.com", mailbox_size=1_200)
    with SyncBrokerClient(dev_broker.url, dev_broker.api_key) as broker:
        whole = broker.list_messages("sync@example.com", include_spam_trash=True)
        assert whole.count == len(whole.messages) == 1_200
        stream = broker.stream_messages("sync@example.com", include_spam_trash=True, limit=700)
        collected = stream.collect()
        assert [m.id for m in collected] == [m.id for m in whole.messages[:700]]
        assert stream.summary is not None
        assert stream.summary.count == 700
        with pytest.raises(Unauthenticated):
            SyncBrokerClient(dev_broker.url, "tbk_wrong").get_account("sync@example.com")


async def test_a_revoked_account_raises_reauthorization_required_with_its_link(
    dev_broker: DevBroker,
) -> None:
    dev_broker.connect("revoked@example.com")
    async with BrokerClient(dev_broker.url, dev_broker.api_key) as broker:
        register_secret((await broker.access_token("revoked@example.com")).access_token)
        dev_broker.revoke_at_google("revoked@example.com")
        with pytest.raises(ReauthorizationRequired) as raised:
            await broker.access_token("revoked@example.com", force_refresh=True)
        problem = raised.value
        assert problem.status == 409
        assert problem.authorization_url is not None
        # A re-authorization link at the broker, which sends the user on to consent.
        assert problem.authorization_url.startswith(f"{dev_broker.url}/v1/oauth/reauthorize?")
        async with httpx.AsyncClient() as browser:
            opened = await browser.get(problem.authorization_url, follow_redirects=False)
        assert opened.status_code == 303
        assert opened.headers["location"].startswith(f"{dev_broker.sandbox}/o/oauth2/v2/auth?")
        assert "login_hint=revoked%40example.com" in opened.headers["location"]
        # The cached token went with the grant: the next call asks the broker again.
        with pytest.raises(ReauthorizationRequired):
            await broker.access_token("revoked@example.com")
        with pytest.raises(ReauthorizationRequired):
            await broker.stream_messages("revoked@example.com").collect()
        assert (await broker.get_account("revoked@example.com")).status == "revoked"
    with (
        SyncBrokerClient(dev_broker.url, dev_broker.api_key) as sync_broker,
        pytest.raises(ReauthorizationRequired) as sync_raised,
    ):
        sync_broker.list_messages("revoked@example.com")
    assert sync_raised.value.authorization_url


async def test_a_stream_cut_short_is_not_taken_for_complete(
    dev_broker: DevBroker,
) -> None:
    """A stream through a proxy that drops the connection: whatever arrived is flagged."""
    dev_broker.connect("cut@example.com", mailbox_size=3_000)

    async def cut_after_first_chunk(request: httpx.Request) -> httpx.Response:
        async with httpx.AsyncClient(timeout=60) as upstream:
            response = await upstream.send(
                upstream.build_request(
                    request.method, request.url, headers=request.headers, content=request.content
                ),
                stream=True,
            )
            first = b""
            async for chunk in response.aiter_raw():
                first += chunk
                if first.count(b"\n") > 10:
                    break
            await response.aclose()
        partial = first[: first.rfind(b"\n") + 1]
        return httpx.Response(
            200, content=partial, headers={"content-type": "application/x-ndjson"}
        )

    proxy = httpx.AsyncClient(transport=httpx.MockTransport(cut_after_first_chunk))
    async with proxy, BrokerClient(dev_broker.url, dev_broker.api_key, http=proxy) as broker:
        stream = broker.stream_messages("cut@example.com")
        with pytest.raises(IncompleteStream) as raised:
            await stream.collect()
        assert 10 <= raised.value.received < 3_000
        assert stream.summary is None


def returned_to(landing: httpx.Response) -> dict[str, str]:
    """The query the broker's callback sent the browser back to the app with."""
    assert landing.status_code == 303, landing.text
    location = landing.headers["location"]
    assert location.startswith(APP_RETURN_TO + "?")
    return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}


def test_an_app_confirms_a_connect_with_the_authorization_outcome(dev_broker: DevBroker) -> None:
    """The connect flow as the client's README shows it: the id kept in the user's session,
    compared on return, and the outcome read from the broker, never from the redirect."""
    with SyncBrokerClient(dev_broker.url, dev_broker.api_key) as broker:
        started = broker.start_authorization(
            login_hint="outcome@example.com", return_to=APP_RETURN_TO
        )
        session = {"authorization": started.id}
        assert broker.get_authorization(started.id).status == "pending"

        back = returned_to(dev_broker.consent(started.authorization_url, "outcome@example.com"))
        assert back == {"authorization": started.id, "status": "connected"}
        assert back["authorization"] == session.pop("authorization")
        outcome = broker.get_authorization(back["authorization"])
        assert outcome.status == "connected"
        assert outcome.account is not None
        assert outcome.error is None
        assert outcome.completed_at is not None
        assert outcome.completed_at >= outcome.created_at
        account = broker.get_account(outcome.account.subject)
        assert (account.id, account.email) == (outcome.account.id, "outcome@example.com")

        # The user presses Cancel: the redirect says failed, and so does the broker.
        cancelled = broker.start_authorization(
            login_hint="outcome@example.com", return_to=APP_RETURN_TO
        )
        landing = dev_broker.consent(
            cancelled.authorization_url, "outcome@example.com", allow=False
        )
        assert returned_to(landing) == {
            "authorization": cancelled.id, "status": "failed", "error": "access_denied"
        }  # fmt: skip
        failed = broker.get_authorization(cancelled.id)
        assert (failed.status, failed.account) == ("failed", None)
        assert failed.error is not None
        assert problem_class(failed.error.code) is AccessDenied

        with pytest.raises(AuthorizationNotFound):
            broker.get_authorization("00000000-0000-4000-8000-000000000000")
