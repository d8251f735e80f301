"""googleapiclient lists mail with `BrokerCredentials`, against the dev broker's sandbox Gmail."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from google.auth.exceptions import RefreshError
from googleapiclient.discovery import build

from tests.client.conftest import DevBroker
from tests.support.hygiene import register_secret
from token_broker_client import BrokerProblem, ReauthorizationRequired, SyncBrokerClient
from token_broker_client.google import BrokerCredentials


def gmail(dev_broker: DevBroker, credentials: BrokerCredentials) -> Any:
    # The discovery document shipped with googleapiclient; requests go to the sandbox.
    return build(
        "gmail",
        "v1",
        credentials=credentials,
        client_options={"api_endpoint": dev_broker.sandbox},
        static_discovery=True,
        cache_discovery=False,
    )


def test_googleapiclient_lists_mail_through_broker_credentials(dev_broker: DevBroker) -> None:
    dev_broker.connect("google@example.com", mailbox_size=250)
    with SyncBrokerClient(dev_broker.url, dev_broker.api_key) as broker:
        credentials = BrokerCredentials(broker, "google@example.com")
        assert not credentials.valid
        messages = gmail(dev_broker, credentials).users().messages()
        # Every page, with Google's own pagination helper.
        ids: list[str] = []
        request = messages.list(userId="me", maxResults=100)
        while request is not None:
            page = request.execute()
            ids += [m["id"] for m in page.get("messages", [])]
            request = messages.list_next(request, page)
        assert credentials.valid
        register_secret(credentials.token)
        assert credentials.token not in repr(credentials)
        assert ids == [m.id for m in broker.list_messages("google@example.com").messages]


def test_a_401_from_google_makes_google_auth_refresh_through_the_broker(
    dev_broker: DevBroker,
) -> None:
    dev_broker.connect("expired@example.com", mailbox_size=10)
    with SyncBrokerClient(dev_broker.url, dev_broker.api_key) as broker:
        credentials = BrokerCredentials(broker, "expired@example.com")
        service = gmail(dev_broker, credentials)
        before = service.users().messages().list(userId="me").execute()
        held = register_secret(credentials.token)
        # Google stops taking the token although it has not expired (the broker and the
        # client still cache it): the 401 makes google-auth refresh, which must force a
        # new token rather than get the refused one back from a cache.
        dev_broker.expire_at_google("expired@example.com")
        answer = service.users().messages().list(userId="me").execute()
        assert answer == before
        assert register_secret(credentials.token) != held


def test_a_revoked_grant_is_both_reauthorization_required_and_a_refresh_error(
    dev_broker: DevBroker,
) -> None:
    dev_broker.connect("gone@example.com", mailbox_size=10)
    with SyncBrokerClient(dev_broker.url, dev_broker.api_key) as broker:
        dev_broker.revoke_at_google("gone@example.com")
        service = gmail(dev_broker, BrokerCredentials(broker, "gone@example.com"))
        with pytest.raises(ReauthorizationRequired) as raised:
            service.users().messages().list(userId="me").execute()
        assert isinstance(raised.value, RefreshError)
        assert isinstance(raised.value, BrokerProblem)
        assert raised.value.authorization_url is not None
        opened = httpx.get(raised.value.authorization_url, follow_redirects=False)
        assert "login_hint=gone%40example.com" in opened.headers["location"]


def test_broker_credentials_need_the_sync_client() -> None:
    from token_broker_client import BrokerClient

    with pytest.raises(TypeError, match="SyncBrokerClient"):
        BrokerCredentials(BrokerClient("http://127.0.0.1:9", "tbk_x"), "a@example.com")  # type: ignore[arg-type]
