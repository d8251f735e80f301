"""Used and expired states are swept in the background, whatever the traffic.

Generated populations of states (used or not, expired or not, more than one batch)
are swept to exactly the live, unused ones; authorizations past their retention go
too; and a running broker empties the table of used states on its own, with no new
authorization started to trigger it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import select

from tests.support.brokers import Broker
from tests.support.polling import eventually
from token_broker.kit.clock import utcnow
from token_broker.services.state_sweep import StateSweep, sweep_interval
from token_broker.settings import Settings
from token_broker.store.database import Database
from token_broker.store.models import Authorization, OAuthState

STATES = st.lists(
    st.tuples(st.booleans(), st.sampled_from([-3600, -1, 1, 600])), min_size=0, max_size=40
)


async def _populate(database: Database, states: list[tuple[bool, int]]) -> set[str]:
    """Add states (used?, expires in seconds); the hashes that should survive a sweep."""
    now = utcnow()
    survivors = set()
    async with database.transaction() as session:
        for used, expires_in in states:
            state_hash = uuid.uuid4().hex
            session.add(
                OAuthState(
                    state_hash=state_hash, code_verifier="sealed", scopes="openid",
                    created_at=now, expires_at=now + timedelta(seconds=expires_in),
                    consumed_at=now if used else None,
                )
            )  # fmt: skip
            if not used and expires_in > 0:
                survivors.add(state_hash)
    return survivors


async def _hashes(database: Database) -> set[str]:
    async with database.transaction() as session:
        return {state.state_hash for state in (await session.exec(select(OAuthState))).all()}


@pytest.fixture
def sweep(database: Database, settings_factory: Callable[..., Settings]) -> StateSweep:
    return StateSweep(database, settings_factory())


@given(states=STATES, batch=st.sampled_from([1, 3, 5000]))
@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
async def test_a_sweep_leaves_exactly_the_live_unused_states(
    database: Database,
    sweep: StateSweep,
    states: list[tuple[bool, int]],
    batch: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("token_broker.services.state_sweep.BATCH", batch)
    async with database.transaction() as session:
        await session.exec(sa.delete(OAuthState))  # type: ignore[call-overload]
    survivors = await _populate(database, states)
    swept = await sweep.sweep()
    assert await _hashes(database) == survivors
    assert swept.states == len(states) - len(survivors)


async def test_authorizations_past_their_retention_are_swept(
    database: Database, settings_factory: Callable[..., Settings]
) -> None:
    now = utcnow()
    async with database.transaction() as session:
        for age_days in (0, 29, 31, 400):
            created = now - timedelta(days=age_days)
            session.add(
                Authorization(
                    id=str(uuid.uuid4()), client_id=None, created_at=created,
                    expires_at=created + timedelta(minutes=10),
                )
            )  # fmt: skip
    swept = await StateSweep(database, settings_factory(authorization_retention_days=30)).sweep()
    assert swept.authorizations == 2
    async with database.transaction() as session:
        assert len((await session.exec(select(Authorization))).all()) == 2


async def test_a_running_broker_sweeps_used_states_with_no_new_authorization(
    broker_factory: Callable[[Settings], Any], settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(state_ttl_seconds=30)
    assert sweep_interval(settings) == 3
    assert sweep_interval(settings_factory()) == 60  # a minute with the default lifetime
    broker: Broker = await broker_factory(settings)
    headers = await broker.headers()
    for _ in range(20):
        assert (
            await broker.client.post("/v1/authorizations", json={}, headers=headers)
        ).status_code == 201
    database = broker.state.database
    async with database.transaction() as session:
        await session.exec(sa.update(OAuthState).values(consumed_at=utcnow()))  # type: ignore[call-overload]
    live = await _populate(database, [(False, 600)] * 3)

    async def only_live_left() -> bool:
        return await _hashes(database) == live

    await eventually(only_live_left, within=10, interval=0.2)
