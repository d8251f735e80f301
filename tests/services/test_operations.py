"""Operations: metrics, graceful shutdown, keep-alive refresh, webhooks, check, deployment."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from pydantic import SecretStr
from sqlmodel import select

from google_sandbox.records import FaultRule
from tests.support.brokers import TEST_KEYS
from tests.support.flow import Live
from tests.support.hygiene import register_secret
from tests.support.polling import eventually
from tests.support.processes import BrokerProcess, cli
from tests.support.provider import Provider
from tests.support.servers import Receiver, serve
from token_broker.kit.clock import utcnow
from token_broker.services.webhooks import SIGNATURE_HEADER, verify
from token_broker.store.models import Account, WebhookDelivery

ROOT = Path(__file__).parents[2]
LIST = "gmail.messages.list"


async def connect(live: Live, email: str = "alice@example.com", mailbox: int = 300) -> str:
    live.provider.state.add_user(email, mailbox_size=mailbox)
    assert (await live.connect(email)).status_code == 200
    return str(live.provider.state.users[email].sub)


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    families: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? ([-+\deE.naNInf]+)$", line)
        assert match, line
        name, raw_labels, value = match.groups()
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', raw_labels or ""))
        families.setdefault(name, []).append((labels, float(value)))
    return families


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    return sum(v for found, v in families.get(name, []) if labels.items() <= found.items())


async def test_metrics_after_a_working_session(live: Live) -> None:
    subject = await connect(live, mailbox=1200)
    headers = await live.headers()
    token_url = f"/v1/accounts/{subject}/access-token"
    await live.broker.client.get(token_url, headers=headers)
    await live.broker.client.get(token_url, headers=headers)
    await live.broker.client.get(token_url, params={"force_refresh": "true"}, headers=headers)
    live.provider.state.faults.append(FaultRule(LIST, status=503, after=1, times=1))
    listed = await live.broker.client.get(f"/v1/accounts/{subject}/messages", headers=headers)
    assert listed.status_code == 200
    await live.broker.client.get("/v1/accounts/nobody@example.com/access-token", headers=headers)
    await live.broker.state.account_gauges.refresh()  # as its timer does

    scraped = await live.broker.client.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    families = samples(scraped.text)
    route = "/v1/accounts/{account}/access-token"
    assert value(families, "token_broker_http_requests_total", route=route, status="200") == 3
    assert value(families, "token_broker_http_requests_total", route=route, status="404") == 1
    assert value(families, "token_broker_http_request_duration_seconds_count", route=route) == 4
    assert value(families, "token_broker_access_token_requests_total", outcome="database") == 1
    assert value(families, "token_broker_access_token_requests_total", outcome="cache_hit") >= 1
    assert value(families, "token_broker_access_token_requests_total", outcome="refreshed") == 1
    assert value(families, "token_broker_refreshes_total", outcome="ok", trigger="request") == 1
    assert (
        value(families, "token_broker_upstream_requests_total", endpoint="token", status="200") == 2
    )
    assert (
        value(
            families,
            "token_broker_upstream_request_duration_seconds_count",
            endpoint="gmail.messages.list",
        )
        == 4
    )
    assert value(families, "token_broker_gmail_pages_total") == 3
    assert value(families, "token_broker_gmail_retries_total", reason="server_error") == 1
    assert value(families, "token_broker_accounts", status="active") == 1
    assert value(families, "token_broker_accounts", status="revoked") == 0

    # No label carries an id, an email or a token.
    forbidden = [subject, "alice@example.com", "ya29.", "1//", "tbk_"]
    async with live.broker.state.database.transaction() as session:
        forbidden.append((await session.exec(select(Account))).one().id)
    for family in families.values():
        for labels, _ in family:
            for label_value in labels.values():
                assert not any(bad in label_value for bad in forbidden), label_value


async def test_a_scrape_never_queries_and_account_counts_follow_on_a_timer(
    provider: Provider, broker_factory, settings_factory
) -> None:
    broker = await broker_factory(
        settings_factory(**provider.settings(), metrics_accounts_interval_seconds=1)
    )
    live = Live(provider, broker, httpx.AsyncClient())
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    engine = broker.state.database.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        scraped = await broker.client.get("/metrics")
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert scraped.status_code == 200
    assert statements == []
    await connect(live)

    async def counted() -> bool:
        families = samples((await broker.client.get("/metrics")).text)
        return value(families, "token_broker_accounts", status="active") == 1

    await eventually(counted, within=5)
    await live.browser.aclose()


async def test_metrics_can_be_switched_off(broker_factory, settings_factory) -> None:
    broker = await broker_factory(settings_factory(metrics_enabled=False))
    assert (await broker.client.get("/metrics")).status_code == 404


# --------------------------------------------------------------------------- shutdown


async def test_sigterm_turns_readyz_503_at_once(broker_factory, settings_factory) -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, _frame: received.append(sig))
    try:
        broker = await broker_factory(settings_factory())  # its drain chains onto the handler
        assert (await broker.client.get("/readyz")).status_code == 200
        os.kill(os.getpid(), signal.SIGTERM)
        await eventually(lambda: received == [signal.SIGTERM])
        response = await broker.client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["shutdown"].startswith("draining")
    finally:
        signal.signal(signal.SIGTERM, previous)


async def test_sigterm_mid_stream_ends_it_cleanly_and_exits_0(provider: Provider, tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/broker.db"
    from token_broker.store.migrations import migrate

    await migrate(url, wait_seconds=5)
    env = {
        "TOKEN_BROKER_DATABASE_URL": url,
        "TOKEN_BROKER_ENCRYPTION_KEYS": TEST_KEYS,
        "TOKEN_BROKER_GOOGLE_CLIENT_ID": "test-client.apps.googleusercontent.com",
        "TOKEN_BROKER_GOOGLE_CLIENT_SECRET": "GOCSPX-test-client-secret-0123456789",
        "TOKEN_BROKER_REDIRECT_URI": "https://broker.example/v1/oauth/callback",
        "TOKEN_BROKER_SHUTDOWN_GRACE_SECONDS": "10",
        **{f"TOKEN_BROKER_{k.upper()}": v for k, v in provider.settings().items()},
    }
    broker = BrokerProcess(env, name="shutdown")
    try:
        await broker.ready()
        from token_broker.services.api_keys import Permission
        from token_broker.services.clients import ClientService
        from token_broker.store.database import Database, create_engine

        database = Database(create_engine(url))
        _, key = await ClientService(database).create(
            "shutdown-test", [p.value for p in Permission]
        )
        await database.dispose()
        register_secret(key)
        headers = {"Authorization": f"Bearer {key}"}
        provider.state.add_user("alice@example.com", mailbox_size=25_000)
        async with httpx.AsyncClient(timeout=30) as http:
            started = await http.post(f"{broker.url}/v1/authorizations", json={}, headers=headers)
            from google_sandbox.browser import consent

            answer = await consent(http, started.json()["authorization_url"])
            register_secret(answer["code"])
            callback = await http.get(
                f"{broker.url}/v1/oauth/callback",
                params={"code": answer["code"], "state": answer["state"]},
            )
            assert callback.status_code == 200
            provider.state.faults.append(FaultRule(LIST, kind="latency", delay=0.3))
            lines: list[dict[str, Any]] = []
            async with http.stream(
                "GET",
                f"{broker.url}/v1/accounts/alice@example.com/messages",
                headers={**headers, "Accept": "application/x-ndjson"},
            ) as response:
                signalled_at = None
                async for line in response.aiter_lines():
                    lines.append(json.loads(line))
                    if len(lines) == 1000 and signalled_at is None:
                        broker.process.send_signal(signal.SIGTERM)
                        signalled_at = time.monotonic()
        final = lines[-1]
        assert final["status"] == "failed"
        assert final["error"]["code"] == "shutting_down"
        assert final["count"] == len(lines) - 1 < 25_000
        code = await asyncio.to_thread(broker.process.wait, 15)
        assert code == 0
        assert signalled_at is not None
        assert time.monotonic() - signalled_at < 10
    finally:
        broker.close()


# --------------------------------------------------------------------------- keep-alive


async def age_refreshes(live: Live, days: int) -> None:
    async with live.broker.state.database.transaction() as session:
        await session.execute(  # type: ignore[call-overload]
            sa.update(Account).values(last_refreshed_at=utcnow() - timedelta(days=days))
        )


async def test_keepalive_refreshes_idle_accounts_and_marks_dead_ones(live: Live) -> None:
    for email in ("a@example.com", "b@example.com", "c@example.com"):
        await connect(live, email)
    await age_refreshes(live, 40)
    live.provider.state.revoke_user("c@example.com")
    live.provider.state.calls.clear()

    report = await live.broker.state.keepalive.sweep()
    assert report.leader
    assert dict(report.outcomes) == {"refreshed": 2, "revoked": 1}
    assert live.provider.state.calls["token:refresh_token"] == 3
    async with live.broker.state.database.transaction() as session:
        accounts = {a.email: a for a in (await session.exec(select(Account))).all()}
    assert accounts["c@example.com"].status == "revoked"
    assert accounts["a@example.com"].last_refreshed_at > utcnow() - timedelta(minutes=1)

    again = await live.broker.state.keepalive.sweep()
    assert dict(again.outcomes) == {}
    assert live.provider.state.calls["token:refresh_token"] == 3


async def test_two_brokers_never_keep_alive_the_same_account(
    backend: str, live: Live, broker_factory, settings_factory
) -> None:
    if backend != "postgres":
        pytest.skip("several brokers share a database only on Postgres")
    for index in range(6):
        await connect(live, f"user{index}@example.com")
    await age_refreshes(live, 40)
    other = await broker_factory(settings_factory(**live.provider.settings()))
    live.provider.state.calls.clear()
    first, second = await asyncio.gather(
        live.broker.state.keepalive.sweep(), other.state.keepalive.sweep()
    )
    refreshed = first.outcomes["refreshed"] + second.outcomes["refreshed"]
    assert refreshed == 6
    assert live.provider.state.calls["token:refresh_token"] == 6
    assert not (first.leader and second.leader and first.outcomes and second.outcomes)


async def test_keepalive_is_off_in_development(settings_factory) -> None:
    assert settings_factory(environment="development").keepalive_active is False
    assert settings_factory().keepalive_active is True


# --------------------------------------------------------------------------- webhooks


async def test_webhook_per_state_change_signed_and_retried(
    provider: Provider, broker_factory, settings_factory
) -> None:
    receiver = Receiver()
    receiver.fail_next = 1  # the first attempt fails: the event is retried, not lost
    secret = register_secret("whsec-test-secret-value")
    async with serve(receiver.app, lifespan="off") as hook_url, httpx.AsyncClient() as browser:
        broker = await broker_factory(
            settings_factory(
                **provider.settings(),
                webhook_url=f"{hook_url}/hook",
                webhook_secret=SecretStr(secret),
            )
        )
        live = Live(provider, broker, browser)
        subject = await connect(live)
        await eventually(lambda: len(receiver.received) == 1, within=10)
        provider.state.revoke_user("alice@example.com")
        headers = await live.headers()
        revoked = await broker.client.get(
            f"/v1/accounts/{subject}/access-token",
            params={"force_refresh": "true"},
            headers=headers,
        )
        assert revoked.status_code == 409
        await eventually(lambda: len(receiver.received) == 2, within=10)
        started = await live.start(login_hint="alice@example.com")
        answer = await live.consent(started["authorization_url"], email="alice@example.com")
        assert (await live.callback(answer)).status_code == 200  # reconnect: active again
        await eventually(lambda: len(receiver.received) == 5, within=10)

    events = []
    for request_headers, body in receiver.received:
        assert verify(secret, request_headers[SIGNATURE_HEADER.lower()], body, now=time.time())
        assert not verify(
            "wrong-secret", request_headers[SIGNATURE_HEADER.lower()], body, now=time.time()
        )
        assert not verify(
            secret, request_headers[SIGNATURE_HEADER.lower()], body + b" ", now=time.time()
        )
        event = json.loads(body)
        assert request_headers["token-broker-event-id"] == event["id"]
        events.append(event)
    assert [e["type"] for e in events[:2]] == ["account.connected", "account.revoked"]
    assert {e["type"] for e in events[2:]} == {
        "account.reactivated",
        "account.recovered",
        "account.connected",
    }
    assert events[0]["account"]["subject"] == subject
    assert events[0]["authorization"] is not None
    assert events[1]["account"]["status"] == "revoked"
    # Google's invalid_grant names no cause, and the broker knew of none (no RISC here).
    assert events[1]["reason"] == "unknown_invalid_grant"
    assert events[1]["account"]["status_reason"] == "unknown_invalid_grant"
    assert "invalid_grant" in events[1]["detail"]
    assert "authorization" not in events[1]
    recovered = next(e for e in events if e["type"] == "account.recovered")
    assert recovered["previous_reason"] == "unknown_invalid_grant"
    assert all(e["account"]["status"] == "active" for e in events[2:])
    # The reconnect's events name the authorization that caused them.
    assert {e["authorization"] for e in events[2:]} == {started["id"]}
    assert all("ya29" not in json.dumps(e) and "1//" not in json.dumps(e) for e in events)
    async with broker.state.database.transaction() as session:
        deliveries = (
            await session.exec(select(WebhookDelivery).order_by(WebhookDelivery.created_at))
        ).all()
    assert [d.attempts for d in deliveries] == [2, 1, 1, 1, 1]
    assert all(d.delivered_at is not None for d in deliveries)


def test_webhook_url_needs_a_secret(settings_factory) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="TOKEN_BROKER_WEBHOOK_SECRET"):
        settings_factory(webhook_url="https://hooks.example/broker")


# --------------------------------------------------------------------------- check, deployment


async def test_check_reports_the_provider(provider: Provider, cli_env, tmp_path) -> None:
    env = {**cli_env, **{f"TOKEN_BROKER_{k.upper()}": v for k, v in provider.settings().items()}}
    result = await asyncio.to_thread(cli, "check", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-3:] == [
        f"ok   provider token endpoint {provider.url}/token (HTTP 400)",
        f"ok   provider signing keys {provider.url}/oauth2/v3/certs (HTTP 200)",
        f"ok   Gmail {provider.url}/gmail/v1/users/me/messages (HTTP 401)",
    ]
    unreachable = {**env, "TOKEN_BROKER_TOKEN_URI": "http://127.0.0.1:9/token"}
    result = await asyncio.to_thread(cli, "check", env=unreachable, cwd=tmp_path)
    assert result.returncode == 1
    assert (
        "FAIL provider token endpoint: http://127.0.0.1:9/token unreachable (ConnectError)"
        in result.stdout
    )

    # One variable: the endpoints come from the provider's discovery document.
    issuer_only = {
        k: v for k, v in env.items() if not k.endswith(("_URI", "_API_BASE")) or "REDIRECT" in k
    }
    result = await asyncio.to_thread(cli, "check", env=issuer_only, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"ok   provider discovery {provider.url}/.well-known/openid-configuration" in result.stdout
    )
    assert f"ok   Gmail {provider.url}/gmail/v1/users/me/messages (HTTP 401)" in result.stdout
    nobody = {**issuer_only, "TOKEN_BROKER_ISSUER": "http://127.0.0.1:9"}
    result = await asyncio.to_thread(cli, "check", env=nobody, cwd=tmp_path)
    assert result.returncode == 1
    assert (
        "FAIL provider discovery: TOKEN_BROKER_ISSUER: no answer from "
        "http://127.0.0.1:9/.well-known/openid-configuration (discovery: ConnectError"
    ) in result.stdout


def test_compose_runs_replicas_behind_one_port_on_one_postgres() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"postgres", "migrate", "broker", "proxy"}
    assert services["broker"]["deploy"]["replicas"] >= 2
    assert "ports" not in services["broker"]
    assert services["proxy"]["ports"]
    assert (
        services["broker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    )
    assert services["postgres"]["healthcheck"]
    assert "postgres-data" in compose["volumes"]


def test_compose_publishes_only_the_api_and_needs_only_dotenv() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert [name for name, spec in services.items() if "ports" in spec] == ["proxy"]
    assert "configs" not in compose  # inline configs need Compose v2.23+: avoided
    assert compose["networks"]["db"]["internal"] is True
    assert services["postgres"]["networks"] == ["db"]
    assert "db" not in services["proxy"]["networks"]
    proxy = (ROOT / "deploy" / "proxy.conf").read_text()
    published = re.findall(r"location (?:= )?(\S+) \{ proxy_pass", proxy)
    assert "/metrics" not in published
    assert {"/v1/", "/healthz", "/readyz", "/docs", "/openapi.json"} <= set(published)
    assert "location / { return 404; }" in proxy

    # Every variable compose requires is in .env.example, and so is every setting the
    # broker cannot serve without.
    required = set(re.findall(r"\$\{(\w+):\?", (ROOT / "docker-compose.yml").read_text()))
    example = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert required <= example
    assert {
        "TOKEN_BROKER_ENCRYPTION_KEYS",
        "TOKEN_BROKER_GOOGLE_CLIENT_ID",
        "TOKEN_BROKER_GOOGLE_CLIENT_SECRET",
        "TOKEN_BROKER_REDIRECT_URI",
    } <= example


def test_the_docker_build_context_is_only_what_the_image_needs() -> None:
    text = (ROOT / ".dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in text if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"  # an allow-list: .venv, .git, .token-broker-dev, .env stay out
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY") and "--from" not in line:
            copied.update(part.rstrip("/") for part in line.split()[1:-1])
    assert copied == allowed
