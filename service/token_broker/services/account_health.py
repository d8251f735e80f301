"""What `token-broker accounts health` shows an operator: accounts by status and reason, grants
ending soon, and the accounts that need attention first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from token_broker.kit.clock import utcnow
from token_broker.store.database import Database
from token_broker.store.models import Account
from token_broker.store.repositories import AccountRepository


@dataclass(frozen=True)
class HealthReport:
    at: datetime
    by_status_and_reason: dict[tuple[str, str | None], int]
    ending_within_notice: int
    notice: timedelta
    accounts: list[Account]  # needing attention first, then by the grant's end

    @property
    def total(self) -> int:
        return sum(self.by_status_and_reason.values())

    def count(self, status: str) -> int:
        return sum(n for (s, _), n in self.by_status_and_reason.items() if s == status)


async def health_report(
    database: Database,
    *,
    status: str | None,
    reason: str | None,
    limit: int,
    notice: timedelta,
) -> HealthReport:
    now = utcnow()
    async with database.transaction() as session:
        accounts = AccountRepository(session)
        counts = await accounts.count_by_status_and_reason()
        ending = await accounts.count_expiring(now + notice)
        rows = await accounts.needing_attention(status=status, reason=reason, limit=limit)
    return HealthReport(now, counts, ending, notice, list(rows))
