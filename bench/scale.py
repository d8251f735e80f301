"""Scale: what one replica costs with 1k, 10k, 100k (or 1M) accounts on Postgres.

For each --accounts N: a fresh database and sandbox, N valid accounts seeded
(`bench.seed`), one broker with default settings (the per-client rate limit off: it
is a policy, not a cost) pinned to core 0, the sandbox and the load on core 1. Then:

- walk: every page of `GET /v1/accounts` (--page-size), the mean page time of the
  first tenth against the last tenth (target: last within 1.5x of first);
- cold lookups: token requests for accounts the replica has not cached, by subject
  and by email (16 at a time; distinct accounts; target: email >= 0.8x subject);
- metrics: `GET /metrics` (median of 50; target: flat from 1k to 100k);
- hot path: wrk on the access-token endpoint cycling over 1, 1k, 10k and 100k
  accounts (as many as there are), each warmed first (target: the largest rotation
  at least 0.8x the single-account rate);
- audit: after the hot path, --audit-requests more token requests (default a
  million) cycling over min(N, 10,000) accounts, then the broker stopped (its audit
  window closes, every count is written): token-issued rows per million of all the
  token requests made (all within one window);
- keys rotate: what `token-broker keys rotate` runs, to a new primary key, timed
  without the command's start-up: accounts per second (target: at least 10,000/s).

With --keepalive (once, on the first N): 500 of the accounts idle past
TOKEN_BROKER_KEEPALIVE_AFTER_DAYS, the sandbox's token endpoint 150 ms away, one
sweep timed (target: under 10 s).

    .venv/bin/uv run python -m bench.scale --accounts 1000 10000 100000 --keepalive
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import col

from bench.common import (
    LOAD_CORE,
    RESULTS,
    SERVER_CORE,
    Broker,
    System,
    storm_many,
    system,
    table,
    verdict,
    wrk,
)
from bench.seed import Seeded
from token_broker.kit.clock import utcnow
from token_broker.services.key_rotation import KeyRotation
from token_broker.store.database import Database, create_engine
from token_broker.store.models import Account, AuditEvent
from token_broker.store.sealing import Keyring

ROTATIONS = (1, 1_000, 10_000, 100_000)


def walk(broker: Broker, headers: dict[str, str], page_size: int) -> tuple[float, float, int]:
    """(first tenth's mean page ms, last tenth's, pages)."""
    times: list[float] = []
    cursor = None
    with httpx.Client(base_url=broker.url, headers=headers, timeout=60) as client:
        client.get("/v1/accounts", params={"limit": 1}).raise_for_status()  # warm: key, pool
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if cursor:
                params["cursor"] = cursor
            started = time.perf_counter()
            page = client.get("/v1/accounts", params=params)
            times.append(time.perf_counter() - started)
            page.raise_for_status()
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
    tenth = max(1, len(times) // 10)
    first = statistics.mean(times[:tenth]) * 1000
    last = statistics.mean(times[-tenth:]) * 1000
    return first, last, len(times)


def cold_lookups(broker: Broker, headers: dict[str, str], references: list[str]) -> float:
    """Requests per second for tokens of accounts this replica has not cached."""
    requests = [(broker.url, f"/v1/accounts/{ref}/access-token") for ref in references]
    started = time.perf_counter()
    answers = asyncio.run(storm_many(requests, headers, 16))
    elapsed = time.perf_counter() - started
    if {answer.status for answer in answers} != {200}:
        raise RuntimeError("a cold lookup failed")
    return len(references) / elapsed


def metrics_ms(broker: Broker) -> float:
    times = []
    with httpx.Client(base_url=broker.url) as client:
        for _ in range(50):
            started = time.perf_counter()
            client.get("/metrics").raise_for_status()
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def rotation_script(subjects: list[str]) -> Any:
    """A wrk script cycling over the access-token paths of `subjects`."""
    path = RESULTS / f"rotation-{len(subjects)}.lua"
    paths = ",\n".join(f'"/v1/accounts/{subject}/access-token"' for subject in subjects)
    path.write_text(
        f"paths = {{\n{paths}\n}}\ncounter = 0\n"
        "request = function()\n  counter = counter + 1\n"
        '  return wrk.format("GET", paths[(counter % #paths) + 1])\nend\n'
    )
    return path


def audit_rows(
    sut: System, broker: Broker, headers: dict[str, str], seeded: list[Seeded], requests: int,
    rate: float,
) -> tuple[int, int]:  # fmt: skip
    """(token requests made, token-issued rows in the database), the broker stopped."""
    subjects = [account.subject for account in seeded[:10_000]]
    measured = wrk(
        f"{broker.url}/v1/accounts/{subjects[0]}/access-token", connections=32,
        seconds=max(1, round(requests / rate)), headers=headers,
        script=rotation_script(subjects),
    )  # fmt: skip
    broker.stop()
    return measured.requests, asyncio.run(issued_rows(sut.database_url))


def hot_path(
    broker: Broker, headers: dict[str, str], seeded: list[Seeded], seconds: int
) -> tuple[list[tuple[int, float, float, int]], int]:
    """[(accounts in rotation, req/s, p99 ms, non-2xx)], and every token request made."""
    results, requests = [], 0
    for size in [size for size in ROTATIONS if size <= len(seeded)]:
        subjects = [account.subject for account in seeded[:size]]
        warm = [(broker.url, f"/v1/accounts/{subject}/access-token") for subject in subjects]
        asyncio.run(storm_many(warm, headers, 32))
        requests += len(warm)
        measured = wrk(
            broker.url + warm[0][1], connections=32, seconds=seconds, headers=headers,
            script=rotation_script(subjects),
        )  # fmt: skip
        requests += measured.requests
        results.append((size, measured.requests_per_second, measured.p99_ms, measured.non_2xx))
    return results, requests


async def issued_rows(database_url: str) -> int:
    engine = create_async_engine(database_url)
    async with engine.connect() as connection:
        count = await connection.scalar(
            sa.select(sa.func.count())
            .select_from(AuditEvent)
            .where(col(AuditEvent.action) == "token_issued")
        )
    await engine.dispose()
    return int(count or 0)


async def keys_rotate(sut: System) -> tuple[float, str]:
    """(accounts per second, its report) for a rotation to a new primary: what
    `token-broker keys rotate` runs, timed without the command's start-up."""
    keyring = Keyring.parse(f"{Keyring.generate_entry('bench2')},{sut.keys}")
    database = Database(create_engine(sut.database_url))
    try:
        started = time.perf_counter()
        report = await KeyRotation(database, keyring).run()
        elapsed = time.perf_counter() - started
    finally:
        await database.dispose()
    return report.examined / elapsed, f"examined {report.examined}, {dict(report.resealed)}"


async def sweep_seconds(sut: System, accounts: int, latency: float) -> tuple[float, Any]:
    """One keep-alive sweep over `accounts` idle accounts, in this process."""
    from token_broker.app import create_app
    from token_broker.settings import load_settings

    engine = create_async_engine(sut.database_url)
    async with engine.begin() as connection:
        idle = sa.select(col(Account.id)).order_by(col(Account.id)).limit(accounts)
        await connection.execute(
            sa.update(Account)
            .where(col(Account.id).in_(idle.scalar_subquery()))
            .values(last_refreshed_at=utcnow() - timedelta(days=60))
        )
    await engine.dispose()
    env = sut.broker_env(keepalive_enabled="false")
    settings = load_settings(**{k.removeprefix("TOKEN_BROKER_").lower(): v for k, v in env.items()})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        sut.control("POST", "/faults", json={"endpoint": "token", "kind": "latency",
                                              "delay": latency})  # fmt: skip
        started = time.perf_counter()
        report = await app.state.broker.keepalive.sweep()
        elapsed = time.perf_counter() - started
        sut.control("DELETE", "/faults")
    return elapsed, dict(report.outcomes)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accounts", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--lookups", type=int, default=2_000, help="cold lookups of each kind")
    parser.add_argument("--seconds", type=int, default=10, help="wrk run per rotation")
    parser.add_argument("--audit-requests", type=int, default=1_000_000, help="0: skip")
    parser.add_argument("--keepalive", action="store_true")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {LOAD_CORE})
    rng = random.Random(21)
    rows: dict[str, list[list[object]]] = {name: [] for name in ("walk", "cold", "hot", "other")}
    keepalive_row = None
    single_rate: float | None = None
    for accounts in args.accounts:
        with system() as sut:
            started = time.perf_counter()
            seeded = sut.seed(accounts)
            seed_seconds = time.perf_counter() - started
            key = sut.api_key("scale")
            headers = {"Authorization": f"Bearer {key}"}
            broker = sut.start_broker(
                f"scale-{accounts}", core=SERVER_CORE, rate_limit_per_second="0"
            )
            try:
                first, last, pages = walk(broker, headers, args.page_size)
                rows["walk"].append([
                    f"{accounts:,}", pages, f"{first:.2f}", f"{last:.2f}",
                    f"{last / first:.2f}x {verdict(last <= 1.5 * first)}",
                ])  # fmt: skip
                sample = rng.sample(seeded, min(len(seeded), 2 * args.lookups))
                half = len(sample) // 2
                by_subject = cold_lookups(broker, headers, [a.subject for a in sample[:half]])
                by_email = cold_lookups(broker, headers, [a.email for a in sample[half:]])
                ratio = by_email / by_subject
                rows["cold"].append([
                    f"{accounts:,}", half, f"{by_subject:,.0f}", f"{by_email:,.0f}",
                    f"{ratio:.2f}x {verdict(ratio >= 0.8)}",
                ])  # fmt: skip
                scrape = metrics_ms(broker)
                rotations, requests = hot_path(broker, headers, seeded, args.seconds)
                for size, rate, p99, bad in rotations:
                    if size == 1:
                        single_rate = rate
                    share = rate / single_rate if single_rate else 1.0
                    rows["hot"].append([
                        f"{accounts:,}", f"{size:,}", f"{rate:,.0f}", f"{p99:.2f}", bad,
                        f"{share:.2f}x {verdict(share >= 0.8 and bad == 0)}",
                    ])  # fmt: skip
                written = 0
                if args.audit_requests:
                    rate = min(rate for _, rate, _, _ in rotations)
                    more, written = audit_rows(
                        sut, broker, headers, seeded, args.audit_requests, rate
                    )
                    requests += more
            finally:
                broker.stop()
            if args.keepalive and keepalive_row is None:
                seconds, outcomes = asyncio.run(sweep_seconds(sut, 500, 0.15))
                keepalive_row = [500, 150, f"{seconds:.2f}", outcomes, verdict(seconds < 10)]
            rate, said = asyncio.run(keys_rotate(sut))
            rows["other"].append([
                f"{accounts:,}", f"{seed_seconds:.1f}", f"{scrape:.2f}",
                f"{min(accounts, 10_000):,}", f"{requests:,}", f"{written:,}",
                f"{written / max(1, requests) * 1_000_000:,.0f}",
                f"{rate:,.0f} {verdict(rate >= 10_000)}",
            ])  # fmt: skip
            print(f"{accounts:,} accounts, keys rotate: {said}", file=sys.stderr)

    print(table(["accounts", "pages", "first tenth ms/page", "last tenth ms/page",
                 "last / first (<= 1.5x)"], rows["walk"]))  # fmt: skip
    print()
    print(table(["accounts", "lookups each", "cold by subject req/s", "cold by email req/s",
                 "email / subject (>= 0.8x)"], rows["cold"]))  # fmt: skip
    print()
    print(table(["accounts", "in rotation", "req/s", "p99 ms", "non-2xx",
                 "vs one account (>= 0.8x)"], rows["hot"]))  # fmt: skip
    print()
    print(table(["accounts", "seed s", "/metrics ms (median)", "audit: most accounts in rotation",
                 "token requests", "token_issued rows", "rows per million requests",
                 "keys rotate accounts/s (>= 10,000)"], rows["other"]))  # fmt: skip
    if keepalive_row is not None:
        print()
        print(table(["idle accounts", "upstream ms", "sweep s", "outcomes", "target < 10 s"],
                    [keepalive_row]))  # fmt: skip


if __name__ == "__main__":
    main()
