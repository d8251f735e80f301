"""Grant health through the client, against a real `token-broker dev` process: a token
request for a scope the grant lacks is refused with its link, a scope upgrade grows the
same account, Google's libraries get `ScopeNotGranted` instead of Gmail's 403, and accounts
are listed by status reason."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from google.auth.exceptions import RefreshError
from googleapiclient.errors import HttpError

from tests.client.conftest import APP_RETURN_TO, METADATA, READONLY, DevBroker, wait_until
from tests.client.test_dev_broker import returned_to
from tests.client.test_google_credentials import gmail
from tests.support.hygiene import register_secret
from token_broker_client import Account, ReauthorizationRequired, ScopeNotGranted, SyncBrokerClient
from token_broker_client.google import BrokerCredentials


def query(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def connect_without_readonly(
    dev_broker: DevBroker, broker: SyncBrokerClient, email: str
) -> Account:
    """`email` connected with gmail.metadata, not gmail.readonly (as a user who unticked it)."""
    started = broker.start_authorization(login_hint=email, scopes=["openid", "email", METADATA])
    landing = dev_broker.consent(started.authorization_url, email)
    assert "Account connected" in landing.text, landing.text
    account = broker.get_account(email)
    assert METADATA in account.scopes
    assert READONLY not in account.scopes
    return account


def test_a_scope_upgrade_grows_the_same_account(dev_broker: DevBroker) -> None:
    email = "upgrade@example.com"
    with SyncBrokerClient(dev_broker.url, dev_broker.api_key) as broker:
        account = connect_without_readonly(dev_broker, broker, email)
        held = broker.access_token(email, scopes=["email", METADATA])  # either spelling
        register_secret(held.access_token)

        with pytest.raises(ScopeNotGranted) as refused:
            broker.access_token(email, scopes=[READONLY])
        assert refused.value.status == 403
        assert refused.value.missing_scopes == [READONLY]
        link = refused.value.authorization_url
        assert link is not None
        assert link.startswith(f"{dev_broker.url}/v1/oauth/reauthorize?")

        upgrade = broker.add_scopes(email, [READONLY], return_to=APP_RETURN_TO)
        at_google = query(upgrade.authorization_url)
        assert (at_google["include_granted_scopes"], at_google["login_hint"]) == ("true", email)
        assert READONLY in at_google["scope"].split()
        assert broker.get_authorization(upgrade.id).status == "pending"
        back = returned_to(dev_broker.consent(upgrade.authorization_url, email))
        assert back == {"authorization": upgrade.id, "status": "connected"}
        outcome = broker.get_authorization(upgrade.id)
        assert outcome.account is not None
        assert (outcome.account.id, outcome.account.subject) == (account.id, account.subject)

        grown = broker.get_account(email)
        assert grown.id == account.id
        assert {READONLY, METADATA} <= set(grown.scopes)
        assert [a.id for a in broker.iter_accounts(email=email)] == [account.id]  # no new one
        upgraded = broker.access_token(email, scopes=[READONLY])
        register_secret(upgraded.access_token)
        assert READONLY in upgraded.scopes


def test_google_libraries_get_scope_not_granted_with_its_link_not_gmails_403(
    dev_broker: DevBroker,
) -> None:
    email = "scoped@example.com"
    with SyncBrokerClient(dev_broker.url, dev_broker.api_key) as broker:
        connect_without_readonly(dev_broker, broker, email)
        message_id = dev_broker.add_message(email, "Scoped")
        # Without scopes, the token is what the grant holds, and Gmail refuses a whole message.
        unscoped = gmail(dev_broker, BrokerCredentials(broker, email)).users().messages()
        with pytest.raises(HttpError) as at_gmail:
            unscoped.get(userId="me", id=message_id, format="full").execute()
        assert at_gmail.value.status_code == 403

        credentials = BrokerCredentials(broker, email, scopes=[READONLY])
        service: Any = gmail(dev_broker, credentials).users().messages()
        with pytest.raises(ScopeNotGranted) as refused:
            service.get(userId="me", id=message_id, format="full").execute()
        assert isinstance(refused.value, RefreshError)
        assert refused.value.missing_scopes == [READONLY]
        assert refused.value.authorization_url is not None

        # The user follows the link: the broker sends them to Google for the missing scope.
        opened = httpx.get(refused.value.authorization_url, follow_redirects=False)
        assert opened.status_code == 303
        landing = dev_broker.consent(opened.headers["location"], email)
        assert "Account connected" in landing.text, landing.text
        message = service.get(userId="me", id=message_id, format="full").execute()
        register_secret(credentials.token)
        assert message["id"] == message_id
        assert "payload" in message
        assert [a.id for a in broker.iter_accounts(email=email)] == [broker.get_account(email).id]


def test_accounts_are_listed_by_status_and_reason(dev_broker: DevBroker) -> None:
    email = "reason@example.com"
    dev_broker.connect(email)
    with SyncBrokerClient(dev_broker.url, dev_broker.api_key) as broker:
        active = broker.get_account(email)
        assert (active.status, active.status_reason) == ("active", None)
        assert active.granted_at is not None
        assert active.email_verified
        # Revoked at Google: Cross-Account Protection tells the broker, no refresh needed.
        dev_broker.revoke_at_google(email)
        revoked = wait_until(
            lambda: (a := broker.get_account(email)).status == "revoked" and a,
            within=10, what="the broker heard of the revocation",
        )  # fmt: skip
        assert revoked.status_reason == "revoked_by_user"
        assert revoked.status_detail
        assert revoked.status_changed_at is not None
        assert revoked.status_changed_at >= active.updated_at

        def listed(**filters: str) -> list[str]:
            return [a.id for a in broker.iter_accounts(email=email, **filters)]

        assert listed(status="revoked", reason="revoked_by_user") == [active.id]
        assert listed(reason="revoked_by_user") == [active.id]
        assert listed(status="revoked", reason="expired_idle") == []
        assert listed(status="active") == []
        with pytest.raises(ReauthorizationRequired) as raised:
            broker.access_token(email)
        assert raised.value.status_reason == "revoked_by_user"
