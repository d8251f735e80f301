"""Grant health in tests: time passing for a grant on both sides, the account as stored, and
webhook receivers."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from pydantic import SecretStr
from sqlmodel import select

from tests.support.brokers import Broker
from tests.support.flow import Live
from tests.support.hygiene import register_secret
from tests.support.provider import Provider
from tests.support.servers import Receiver, serve
from token_broker.settings import Settings
from token_broker.store.models import Account

WEBHOOK_SECRET = register_secret("whsec-grant-health-secret")


async def account(broker: Broker, subject: str) -> Account:
    async with broker.state.database.transaction() as session:
        return (await session.exec(select(Account).where(Account.subject == subject))).one()


async def let_time_pass(live: Live, email: str, seconds: float) -> None:
    """`seconds` pass for the user's grant: at the sandbox, and in what the broker knows."""
    live.provider.state.age_grants(email, seconds)
    shift = timedelta(seconds=seconds)
    columns = ("granted_at", "grant_expires_at", "last_refreshed_at", "created_at")
    async with live.broker.state.database.transaction() as session:
        rows = (await session.exec(select(Account).where(Account.email == email))).all()
        for row in rows:
            values = {name: getattr(row, name) - shift for name in columns if getattr(row, name)}
            await session.execute(  # type: ignore[call-overload]
                sa.update(Account).where(Account.id == row.id).values(**values)
            )
    live.broker.state.tokens.forget(None)


def events(receiver: Receiver, kind: str | None = None) -> list[dict[str, Any]]:
    found = [json.loads(body) for _, body in receiver.received]
    return [event for event in found if kind is None or event["type"] == kind]


@contextlib.asynccontextmanager
async def live_with_webhooks(
    provider: Provider,
    broker_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
    **overrides: Any,
) -> AsyncIterator[tuple[Live, Receiver]]:
    """A broker on the sandbox whose webhooks reach a receiver on 127.0.0.1."""
    receiver = Receiver()
    async with serve(receiver.app, lifespan="off") as hook_url, httpx.AsyncClient() as browser:
        broker = await broker_factory(
            settings_factory(
                **provider.settings(),
                webhook_url=f"{hook_url}/hook",
                webhook_secret=SecretStr(WEBHOOK_SECRET),
                **overrides,
            )
        )
        yield Live(provider, broker, browser), receiver
