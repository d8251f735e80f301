"""Secret hygiene: the whole flow with recognisable secrets, and every place they could leak.

Scanned: every log record (captured before any redaction, so this proves the code
does not log them, not that the filter hides them), every response body and
header, the metrics, every audit row, and every webhook body.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlmodel import select

from google_sandbox import SandboxState, create_sandbox_app
from tests.support.brokers import TEST_CLIENT_ID, TEST_KEYS, TEST_REDIRECT_URI
from tests.support.flow import Live
from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from tests.support.provider import Provider
from tests.support.servers import Receiver, serve
from token_broker.observability.logs import JsonFormatter
from token_broker.settings import Settings
from token_broker.store.models import Account, AuditEvent, OAuthState

CLIENT_SECRET = register_secret("GOCSPX-HYGIENE-client-secret-7f3a")
WEBHOOK_SECRET = register_secret("whsec-HYGIENE-webhook-secret-9c1d")
SHAPES = re.compile(r"ya29\.|1//|tbk_[A-Za-z0-9_-]{20}|eyJ[\w-]{10,}\.|4/0A")


class Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.formatter_ = JsonFormatter()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.formatter_.format(record))


@pytest.fixture
def captured_logs() -> Any:
    handler = Everything()
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(previous)


async def test_no_secret_leaves_where_it_should_not(
    broker_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
    captured_logs: Everything,
) -> None:
    state = SandboxState(default_mailbox_size=700)
    state.add_client(TEST_CLIENT_ID, CLIENT_SECRET, [TEST_REDIRECT_URI])
    receiver = Receiver()
    responses: list[tuple[str, httpx.Response]] = []

    async def keep(response: httpx.Response) -> None:
        await response.aread()
        responses.append((response.request.url.path, response))

    async with (
        serve(create_sandbox_app(state)) as sandbox_url,
        serve(receiver.app, lifespan="off") as hook_url,
        httpx.AsyncClient() as browser,
    ):
        state.issuer = sandbox_url
        provider = Provider(state, sandbox_url)
        broker = await broker_factory(
            settings_factory(
                **provider.settings(),
                google_client_secret=SecretStr(CLIENT_SECRET),
                webhook_url=f"{hook_url}/hook",
                webhook_secret=SecretStr(WEBHOOK_SECRET),
                access_log=True,
                log_level="DEBUG",
            )
        )
        broker.client.event_hooks["response"].append(keep)
        live = Live(provider, broker, browser)

        started = await live.start(
            login_hint="alice@example.com", return_to="https://app.example/connected"
        )
        answer = await live.consent(started["authorization_url"])
        code = answer["code"]
        assert (await live.callback(answer)).status_code == 303
        subject = state.users["alice@example.com"].sub
        headers = await live.headers()
        api_key = headers["Authorization"].split()[1]
        token_path = f"/v1/accounts/{subject}/access-token"
        for params in ({}, {}, {"force_refresh": "true"}):
            assert (
                await broker.client.get(token_path, params=params, headers=headers)
            ).status_code == 200
        assert (
            await broker.client.get(f"/v1/accounts/{subject}/messages", headers=headers)
        ).status_code == 200
        streamed = await broker.client.get(
            f"/v1/accounts/{subject}/messages",
            headers={**headers, "Accept": "application/x-ndjson"},
        )
        assert streamed.status_code == 200
        state.revoke_user("alice@example.com")
        assert (
            await broker.client.get(token_path, params={"force_refresh": "true"}, headers=headers)
        ).status_code == 409
        await eventually(lambda: len(receiver.received) == 1, within=10)
        again = await live.consent((await live.start())["authorization_url"])
        assert (await live.callback(again)).status_code == 200
        await eventually(lambda: len(receiver.received) == 2, within=10)
        assert (await broker.client.get("/v1/accounts", headers=headers)).status_code == 200
        bad = await broker.client.post(
            "/v1/oauth/exchange", json={"code": "4/0Aforged-code"}, headers=headers
        )
        assert bad.status_code == 400
        metrics = (await broker.client.get("/metrics")).text
        async with broker.state.database.transaction() as session:
            audit = [e.model_dump_json() for e in (await session.exec(select(AuditEvent))).all()]
            verifiers = [
                broker.state.keyring.open(
                    s.code_verifier, column=OAuthState.CODE_VERIFIER, row=s.state_hash
                ).get_secret_value()
                for s in (await session.exec(select(OAuthState))).all()
            ]
            (account,) = (await session.exec(select(Account))).all()
        assert (
            await broker.client.delete(f"/v1/accounts/{subject}", headers=headers)
        ).status_code == 200
        await broker.state.audit.flush()

    issued_access = set(state.access_tokens)
    issued_refresh = {
        t for g in state.grants.values() for t in g.refresh_tokens | g.rotated_refresh_tokens
    }
    never_anywhere = {
        CLIENT_SECRET, WEBHOOK_SECRET, api_key, code, again["code"], "4/0Aforged-code",
        TEST_KEYS.split(":", 1)[1], *issued_refresh, *verifiers,
    }  # fmt: skip
    assert account.refresh_token is not None
    never_anywhere.add(account.refresh_token)  # not even the ciphertext leaves the database
    for secret in never_anywhere:
        register_secret(secret)
    for token in issued_access:
        register_secret(token)

    places = {
        "logs": "\n".join(captured_logs.lines),
        "metrics": metrics,
        "audit": "\n".join(audit),
        "webhooks": "\n".join(body.decode() for _, body in receiver.received),
    }
    assert captured_logs.lines, "nothing was logged: the scan would prove nothing"
    for name, text in places.items():
        found = [s[:8] for s in never_anywhere | issued_access if s in text]
        assert not found, f"{name} contain {found}"
        assert not SHAPES.search(text), (
            f"{name} contain a token-shaped string: {SHAPES.search(text)}"
        )
    for path, response in responses:
        text = response.text + json.dumps(dict(response.headers))
        found = [s[:8] for s in never_anywhere if s in text]
        assert not found, f"{path} answered {found}"
        if not path.endswith("/access-token"):
            assert not [t for t in issued_access if t in text], path
