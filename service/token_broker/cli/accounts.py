"""`accounts health`: accounts by status and reason, and those needing attention."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import typer

from token_broker.cli.app import accounts_app
from token_broker.cli.common import settings_or_exit, with_database
from token_broker.services.account_health import HealthReport, health_report
from token_broker.services.grant_health import StatusReason


@accounts_app.command("health")
def accounts_health(
    status: Annotated[
        str | None, typer.Option(help="Only accounts with this status (active, revoked, …).")
    ] = None,
    reason: Annotated[
        StatusReason | None, typer.Option(help="Only accounts with this status_reason.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Accounts listed.")] = 50,
) -> None:
    """Accounts by status and reason, grants ending soon, and the accounts needing attention."""
    settings = settings_or_exit()
    notice = timedelta(seconds=settings.expiring_notice_seconds)
    report = with_database(
        settings,
        lambda db: health_report(db, status=status, reason=reason, limit=limit, notice=notice),
    )
    for line in health_lines(report):
        typer.echo(line)


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = (moment - now).total_seconds()
    span = abs(seconds)
    amount = (
        f"{span / 86_400:.0f}d" if span >= 86_400
        else f"{span / 3600:.0f}h" if span >= 3600
        else f"{span / 60:.0f}m"
    )  # fmt: skip
    stamp = moment.strftime("%m-%d %H:%M")
    return f"{stamp} (in {amount})" if seconds > 0 else f"{stamp} ({amount} ago)"


def health_lines(report: HealthReport) -> list[str]:
    """The report as an operator reads it: a summary, counts by reason, then the accounts."""
    statuses = ", ".join(
        f"{report.count(status)} {status}" for status in ("active", "revoked", "suspended")
    )
    hours = report.notice.total_seconds() / 3600
    ending = report.ending_within_notice
    lines = [
        f"{report.total} accounts: {statuses}; {ending} grant{'' if ending == 1 else 's'} "
        f"end{'s' if ending == 1 else ''} within {hours:g}h (times in UTC)",
        "",
        f"{'STATUS':<10} {'REASON':<30} COUNT",
    ]
    for (status, reason), count in sorted(
        report.by_status_and_reason.items(), key=lambda item: (item[0][0], item[0][1] or "")
    ):
        lines.append(f"{status:<10} {reason or '-':<30} {count}")
    lines += [
        "",
        f"{'ACCOUNT':<28} {'STATUS':<10} {'REASON':<30} {'SINCE':<22} {'GRANT ENDS':<22} "
        "LAST REFRESH",
    ]
    for account in report.accounts:
        who = (account.email or account.subject)[:28]
        lines.append(
            f"{who:<28} {account.status:<10} {account.status_reason or '-':<30} "
            f"{_when(account.status_changed_at, report.at):<22} "
            f"{_when(account.grant_expires_at, report.at):<22} "
            f"{_when(account.last_refreshed_at, report.at)}"
        )
    if not report.accounts:
        lines.append("(none)")
    return lines
