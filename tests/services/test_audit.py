"""The token-issued audit: at most two rows per client, account and window, whatever the
volume; what the rows say; the window closed early when too many pairs are counted."""

from __future__ import annotations

from typing import Any

from sqlmodel import select

from token_broker.services.audit import Action, AuditBuffer
from token_broker.store.database import Database
from token_broker.store.models import AuditEvent

HOUR = 3600.0
START = 1_800_000_000.0  # on an hour boundary


class Clock:
    def __init__(self) -> None:
        self.now = START + 10

    def __call__(self) -> float:
        return self.now


async def rows(database: Database) -> list[AuditEvent]:
    async with database.transaction() as session:
        return list((await session.exec(select(AuditEvent).order_by(AuditEvent.id))).all())


def issue(buffer: AuditBuffer, client: str, account: str, source: str = "cache_hit") -> None:
    buffer.count(Action.TOKEN_ISSUED, client_id=client, account_id=account, source=source)


async def test_many_tokens_cost_two_rows_per_client_account_and_window(
    database: Database,
) -> None:
    clock = Clock()
    buffer = AuditBuffer(database, window_seconds=HOUR, clock=clock)
    pairs = [(f"client{c}", f"account{a}") for c in range(3) for a in range(5)]
    for round_number in range(100):
        for client, account in pairs:
            issue(buffer, client, account, "refreshed" if round_number == 0 else "cache_hit")
    await buffer.flush()
    firsts = await rows(database)
    assert len(firsts) == len(pairs)  # the first of each pair, at once
    detail: dict[str, Any] = firsts[0].detail or {}
    assert detail["source"] == "refreshed"
    assert detail["first_in_window"] == {
        "start": "2027-01-15T08:00:00Z",
        "end": "2027-01-15T09:00:00Z",
    }

    clock.now = START + HOUR + 1  # the window is over: one count per pair
    await buffer.flush()
    closing = (await rows(database))[len(pairs) :]
    assert len(closing) == len(pairs)
    assert {(e.client_id, e.account_id) for e in closing} == set(pairs)
    assert all(e.detail == {
        "count": 100, "sources": {"refreshed": 1, "cache_hit": 99},
        "window": {"start": "2027-01-15T08:00:00Z", "end": "2027-01-15T09:00:00Z"},
    } for e in closing)  # fmt: skip

    issue(buffer, "client0", "account0")  # a new window: a new first row
    await buffer.flush()
    assert len(await rows(database)) == 2 * len(pairs) + 1


async def test_a_single_token_in_a_window_is_one_row(database: Database) -> None:
    clock = Clock()
    buffer = AuditBuffer(database, window_seconds=HOUR, clock=clock)
    issue(buffer, "client", "account")
    clock.now += HOUR
    await buffer.flush()
    assert len(await rows(database)) == 1


async def test_too_many_pairs_close_the_window_early(database: Database) -> None:
    clock = Clock()
    buffer = AuditBuffer(database, window_seconds=HOUR, max_counted=2, clock=clock)
    for _ in range(3):
        issue(buffer, "client", "a")
        issue(buffer, "client", "b")
    clock.now += 60
    issue(buffer, "client", "c")  # a third pair: the first two are counted now
    issue(buffer, "client", "c")
    await buffer.stop()  # shutting down counts what the window holds so far
    events = await rows(database)
    counts = {(e.account_id, (e.detail or {}).get("count")) for e in events}
    assert counts == {("a", None), ("b", None), ("a", 3), ("b", 3), ("c", None), ("c", 2)}
    early = [e for e in events if (e.detail or {}).get("count") == 3]
    assert early[0].detail is not None
    assert early[0].detail["window"]["end"] == "2027-01-15T08:01:10Z"
