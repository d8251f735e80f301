"""Steady mixed load on two replicas while the sandbox injects faults; errors by class.

Two broker processes share Postgres. Callers spread over both ask for cached tokens
(most of the traffic), force refreshes, and list mailboxes. Every few seconds the
sandbox fails a burst of calls: Gmail 503s and 429s with Retry-After, token
endpoint 503s, dropped connections and slow answers. At the end every account is
used again through both replicas.

Pass: no 5xx other than the documented 503s, nothing undocumented, no account lost.

    .venv/bin/uv run python -m bench.load [--seconds 180] [--callers 16]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter

import httpx

from bench.common import System, connect_account, system, table, verdict

ACCOUNTS = 20
DOCUMENTED_5XX = {(503, "upstream_unavailable"), (503, "database_unavailable")}
DOCUMENTED_4XX = {
    (429, "upstream_rate_limited"),
    (429, "rate_limited"),
    (409, "reauthorization_required"),
}
FAULTS = [
    {"endpoint": "gmail.messages.list", "status": 503, "times": 12},
    {"endpoint": "gmail.messages.list", "status": 429, "retry_after": 1, "times": 4},
    {
        "endpoint": "gmail.messages.list",
        "status": 403,
        "reason": "userRateLimitExceeded",
        "times": 4,
    },
    {"endpoint": "gmail.messages.list", "kind": "drop", "times": 3},
    {"endpoint": "token", "status": 503, "times": 4},
    {"endpoint": "token", "kind": "drop", "times": 2},
    {"endpoint": "gmail.messages.list", "kind": "latency", "delay": 0.5, "times": 10},
]  # fmt: skip


def classify(response: httpx.Response) -> tuple[int, str]:
    if response.status_code < 400:
        return response.status_code, "ok"
    try:
        return response.status_code, str(response.json().get("code"))
    except ValueError:
        return response.status_code, "not a problem document"


async def caller(
    urls: list[str], key: str, emails: list[str], until: float, outcomes: Counter[tuple[int, str]],
    rng: random.Random,
) -> None:  # fmt: skip
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=60, headers=headers) as client:
        while time.monotonic() < until:
            base = rng.choice(urls)
            email = rng.choice(emails)
            roll = rng.random()
            try:
                if roll < 0.80:
                    response = await client.get(f"{base}/v1/accounts/{email}/access-token")
                elif roll < 0.85:
                    response = await client.get(
                        f"{base}/v1/accounts/{email}/access-token", params={"force_refresh": "true"}
                    )
                else:
                    response = await client.get(f"{base}/v1/accounts/{email}/messages")
                outcomes[classify(response)] += 1
            except httpx.HTTPError as error:
                outcomes[(0, f"transport: {type(error).__name__}")] += 1


async def chaos(sut: System, until: float, rng: random.Random) -> int:
    bursts = 0
    async with httpx.AsyncClient() as client:
        while time.monotonic() < until:
            await asyncio.sleep(rng.uniform(2, 5))
            fault = rng.choice(FAULTS)
            await client.post(f"{sut.sandbox_url}/_sandbox/faults", json=fault)
            bursts += 1
    return bursts


async def run(
    sut: System, urls: list[str], key: str, seconds: int, callers: int
) -> tuple[Counter[tuple[int, str]], int]:
    rng = random.Random(7)
    emails = [f"load{i}@example.com" for i in range(ACCOUNTS)]
    outcomes: Counter[tuple[int, str]] = Counter()
    until = time.monotonic() + seconds
    results = await asyncio.gather(
        chaos(sut, until, rng),
        *(caller(urls, key, emails, until, outcomes, random.Random(i)) for i in range(callers)),
    )
    return outcomes, int(results[0])


async def survivors(urls: list[str], key: str) -> tuple[int, int]:
    """(accounts fine on every replica, accounts lost)."""
    fine = lost = 0
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=60, headers=headers) as client:
        for index in range(ACCOUNTS):
            email = f"load{index}@example.com"
            ok = True
            for base in urls:
                account = await client.get(f"{base}/v1/accounts/{email}")
                token = await client.get(
                    f"{base}/v1/accounts/{email}/access-token", params={"force_refresh": "true"}
                )
                ok = ok and account.status_code == 200 and account.json()["status"] == "active"
                ok = ok and token.status_code == 200
            fine += ok
            lost += not ok
    return fine, lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=180)
    parser.add_argument("--callers", type=int, default=16)
    args = parser.parse_args()

    with system(sandbox_core=None) as sut:
        # Each replica with its own quota (no Redis here) of Gmail's older 15,000 a minute.
        brokers = [
            sut.start_broker(
                f"load-{i}", refresh_cooldown_seconds="1", gmail_quota_units_per_minute="15000"
            )
            for i in range(2)
        ]
        try:
            key = sut.api_key("load")
            for index in range(ACCOUNTS):
                email = f"load{index}@example.com"
                sut.control("POST", "/users", json={"email": email, "mailbox_size": 1_500})
                asyncio.run(connect_account(brokers[index % 2].url, key, email))
            urls = [broker.url for broker in brokers]
            started = time.monotonic()
            outcomes, bursts = asyncio.run(run(sut, urls, key, args.seconds, args.callers))
            elapsed = time.monotonic() - started
            sut.control("DELETE", "/faults")
            fine, lost = asyncio.run(survivors(urls, key))
            upstream = sut.control("GET", "/counters").json()["calls"]
        finally:
            for broker in brokers:
                broker.stop()

    total = sum(outcomes.values())
    rows = []
    undocumented = 0
    for (status, code), count in sorted(outcomes.items()):
        if status == 0:
            kind = "transport error (client side)"
            undocumented += count
        elif status < 400:
            kind = "success"
        elif (status, code) in DOCUMENTED_5XX:
            kind = "documented 503"
        elif (status, code) in DOCUMENTED_4XX:
            kind = "documented 4xx"
        else:
            kind = "UNDOCUMENTED"
            undocumented += count
        rows.append([status or "-", code, kind, f"{count:,}", f"{100 * count / total:.2f}%"])
    print(table(["status", "code", "class", "requests", "share"], rows))
    print(
        f"\n{total:,} requests in {elapsed:.0f} s ({total / elapsed:,.0f}/s) on 2 replicas, "
        f"{bursts} fault bursts; upstream calls: {upstream}"
    )
    clean = verdict(undocumented == 0)
    kept = verdict(lost == 0)
    print(f"undocumented answers or 5xx other than documented 503s: {undocumented} ({clean})")
    print(f"accounts usable on both replicas afterwards: {fine}/{ACCOUNTS}, lost: {lost} ({kept})")


if __name__ == "__main__":
    main()
