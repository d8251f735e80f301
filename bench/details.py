"""Details: Gmail message details (format=metadata) at Gmail's per-user quota, through the broker,
beside what a service would otherwise write (google-api-python-client, `BatchHttpRequest` of 100,
rate-limited parts retried with the library's own `execute(num_retries=...)`), on the same
sandbox.

The sandbox enforces Gmail's per-user quota at `--quota-per-minute` (Gmail's unit costs:
5 a list page, 5 a message; its burst a tenth of a minute's units) and Gmail's
concurrency limit (64 calls in progress per user, a batch counting its parts), and
adds `--latency` to every Gmail call. The broker is configured with the same quota.
Reported per run: messages a second, the share of the quota used (units the sandbox
charged / (quota a second x wall time)), rate-limit answers the sandbox gave (429 or
403, rate or concurrency), and the broker's peak RSS. Then two replicas sharing the
quota through Redis, each serving a listing of the same user at the same time.

    .venv/bin/uv run python -m bench.details                       # 25k and 100k (long)
    .venv/bin/uv run python -m bench.details --sizes 500 2000 --reference-size 500 \\
        --replica-size 1000 --quota-per-minute 60000               # a small proof
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from bench.common import (
    LOAD_CORE,
    SERVER_CORE,
    Broker,
    System,
    connect_account,
    system,
    table,
    verdict,
)
from token_broker.settings import Settings

GMAIL_ENDPOINTS = ("gmail.messages.list", "gmail.messages.get", "gmail.batch")
HEADERS = ("Subject", "From", "Date")
REDIS_URL = os.environ.get("TOKEN_BROKER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass
class Run:
    messages: int
    wall: float
    units: int
    refused: int
    peak_mb: float = 0.0

    def per_second(self) -> float:
        return self.messages / self.wall

    def quota_share(self, per_minute: int) -> float:
        return self.units / (per_minute / 60 * self.wall)


def quota_report(sut: System) -> dict[str, Any]:
    return dict(sut.control("GET", "/quota").json())


def spent_and_refused(sut: System, email: str) -> tuple[int, int]:
    report = quota_report(sut)
    return int(report["spent"].get(email, 0)), report["rate_limited"] + report[
        "concurrency_limited"
    ]


def broker_env(per_minute: int, **extra: str) -> dict[str, str]:
    return {
        "gmail_quota_units_per_minute": str(per_minute),
        "log_level": "WARNING",
        **extra,
    }


def stream_details(broker_url: str, key: str, email: str) -> int:
    """One NDJSON listing with details; the messages received (the last line must say complete)."""
    params = [("format", "metadata"), ("includeSpamTrash", "true")]
    params += [("metadataHeaders", name) for name in HEADERS]
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/x-ndjson"}
    count = 0
    last = ""
    with (
        httpx.Client(timeout=3600) as client,
        client.stream(
            "GET", f"{broker_url}/v1/accounts/{email}/messages", params=params, headers=headers
        ) as response,
    ):
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith('{"id"'):
                count += 1
            else:
                last = line
    final = json.loads(last)
    if final.get("status") != "complete":
        raise RuntimeError(f"listing failed: {last[:300]}")
    return count


def broker_run(sut: System, key: str, email: str, per_minute: int) -> Run:
    """A fresh broker process, one listing with details (its peak RSS is that listing's)."""
    broker = sut.start_broker(f"details-{email}", core=SERVER_CORE, **broker_env(per_minute))
    try:
        # Warm the process (key, token, code paths) with a one-message listing.
        httpx.get(
            f"{broker.url}/v1/accounts/{email}/messages", params={"limit": 1},
            headers={"Authorization": f"Bearer {key}"}, timeout=60,
        ).raise_for_status()  # fmt: skip
        spent, refused = spent_and_refused(sut, email)
        started = time.perf_counter()
        count = stream_details(broker.url, key, email)
        wall = time.perf_counter() - started
        spent_after, refused_after = spent_and_refused(sut, email)
        return Run(count, wall, spent_after - spent, refused_after - refused,
                   broker.process.peak_rss_mb())  # fmt: skip
    finally:
        broker.stop()


def reference_run(sut: System, token: str, email: str) -> Run:
    """What a service would write with Google's client library."""
    from google.oauth2.credentials import Credentials
    from googleapiclient.discovery import build
    from googleapiclient.errors import HttpError
    from googleapiclient.http import BatchHttpRequest

    service = build(
        "gmail", "v1", credentials=Credentials(token), static_discovery=True,
        cache_discovery=False, client_options={"api_endpoint": sut.sandbox_url + "/"},
    )  # fmt: skip
    messages = service.users().messages()

    def get(message_id: str) -> Any:
        return messages.get(
            userId="me", id=message_id, format="metadata", metadataHeaders=list(HEADERS)
        )

    spent, refused = spent_and_refused(sut, email)
    started = time.perf_counter()
    ids: list[str] = []
    request = messages.list(userId="me", includeSpamTrash=True, maxResults=500)
    while request is not None:
        page = request.execute(num_retries=5)
        ids += [m["id"] for m in page.get("messages", [])]
        request = messages.list_next(request, page)
    fetched = 0
    retry: list[str] = []
    for start in range(0, len(ids), 100):
        retry.clear()

        def collect(request_id: str, response: Any, exception: HttpError | None) -> None:
            nonlocal fetched
            if exception is None:
                fetched += 1
            elif exception.resp.status in (403, 429):
                retry.append(request_id)
            else:
                raise exception

        batch = BatchHttpRequest(callback=collect, batch_uri=f"{sut.sandbox_url}/batch/gmail/v1")
        for message_id in ids[start : start + 100]:
            batch.add(get(message_id), request_id=message_id)
        batch.execute()
        for message_id in retry:
            get(message_id).execute(num_retries=8)  # the library's own backoff on 429/403
            fetched += 1
    wall = time.perf_counter() - started
    spent_after, refused_after = spent_and_refused(sut, email)
    return Run(fetched, wall, spent_after - spent, refused_after - refused)


def replicas_run(sut: System, key: str, email: str, per_minute: int) -> tuple[Run, int]:
    """Two replicas sharing the quota through Redis, one listing each, at the same time."""
    prefix = f"tb-bench-{uuid.uuid4().hex[:8]}:"
    env = broker_env(per_minute, redis_url=REDIS_URL, redis_key_prefix=prefix)
    brokers: list[Broker] = [
        sut.start_broker(f"details-replica{i}", core=SERVER_CORE, **env) for i in range(2)
    ]
    try:
        spent, refused = spent_and_refused(sut, email)
        started = time.perf_counter()

        async def both() -> list[int]:
            return list(await asyncio.gather(*(
                asyncio.to_thread(stream_details, broker.url, key, email) for broker in brokers
            )))  # fmt: skip

        counts = asyncio.run(both())
        wall = time.perf_counter() - started
        spent_after, refused_after = spent_and_refused(sut, email)
        ready = [httpx.get(f"{b.url}/readyz").json()["checks"]["gmail_quota"] for b in brokers]
        if ready != ["ok", "ok"]:
            raise RuntimeError(f"a replica was not on Redis: {ready}")
        return Run(sum(counts), wall, spent_after - spent, refused_after - refused), len(counts)
    finally:
        for broker in brokers:
            broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 100_000])
    parser.add_argument("--reference-size", type=int, default=25_000)
    parser.add_argument("--replica-size", type=int, default=25_000)
    parser.add_argument("--quota-per-minute", type=int, default=60_000,
                        help="the per-user quota, in units a minute, on both sides")  # fmt: skip
    parser.add_argument("--latency", type=float, default=0.05, help="added per Gmail call (s)")
    args = parser.parse_args()
    per_minute = args.quota_per_minute

    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {LOAD_CORE})  # the clients stay off the broker's core
    sizes = sorted({*args.sizes, args.reference_size, args.replica_size})
    with system() as sut:
        setup = sut.start_broker("details-setup")
        key = sut.api_key("details")
        tokens: dict[int, str] = {}
        for size in sizes:
            email = f"details{size}@example.com"
            sut.control("POST", "/users", json={"email": email, "mailbox_size": size})
            asyncio.run(connect_account(setup.url, key, email))
            tokens[size] = httpx.get(
                f"{setup.url}/v1/accounts/{email}/access-token",
                headers={"Authorization": f"Bearer {key}"},
            ).json()["access_token"]
            httpx.get(  # build the seeded mailbox now, outside any measurement
                f"{sut.sandbox_url}/gmail/v1/users/me/messages",
                params={"maxResults": 1, "includeSpamTrash": "true"},
                headers={"Authorization": f"Bearer {tokens[size]}"}, timeout=300,
            ).raise_for_status()  # fmt: skip
        setup.stop()
        sut.control("PUT", "/quota", json={"units_per_minute": per_minute, "concurrent_limit": 64})
        for endpoint in GMAIL_ENDPOINTS:
            sut.control("POST", "/faults", json={"endpoint": endpoint, "kind": "latency",
                                                  "delay": args.latency})  # fmt: skip

        rows = []
        runs: dict[int, Run] = {}
        for size in args.sizes:
            run = runs[size] = broker_run(sut, key, f"details{size}@example.com", per_minute)
            share = run.quota_share(per_minute)
            rows.append([
                "broker", f"{size:,}", f"{run.messages:,}", f"{run.wall:.1f}",
                f"{run.per_second():.0f}", f"{share:.0%} {verdict(share >= 0.9)}",
                f"{run.refused} {verdict(run.refused == 0)}", f"{run.peak_mb:.0f}",
            ])  # fmt: skip
        reference = reference_run(
            sut, tokens[args.reference_size], f"details{args.reference_size}@example.com"
        )
        ours = runs.get(args.reference_size)
        rows.append([
            "google-api-python-client", f"{args.reference_size:,}", f"{reference.messages:,}",
            f"{reference.wall:.1f}", f"{reference.per_second():.0f}",
            f"{reference.quota_share(per_minute):.0%}", str(reference.refused), "",
        ])  # fmt: skip
        replicas, _ = replicas_run(sut, key, f"details{args.replica_size}@example.com", per_minute)

    print(f"quota {per_minute:,} units/min per user ({per_minute / 60 / 5:.0f} messages/s), "
          f"{args.latency * 1000:.0f} ms added per Gmail call\n")  # fmt: skip
    print(table(
        ["client", "mailbox", "messages", "wall s", "messages/s", "quota used (>= 90 %)",
         "rate-limit answers (= 0)", "broker peak RSS MB"],
        rows,
    ))  # fmt: skip
    if ours is not None:
        speedup = reference.wall / ours.wall
        print(f"\nbroker vs google-api-python-client at {args.reference_size:,}: "
              f"{speedup:.1f}x faster ({verdict(speedup > 1)})")  # fmt: skip
    small, large = min(args.sizes), max(args.sizes)
    if small != large:
        growth = runs[large].peak_mb - runs[small].peak_mb
        print(f"NDJSON peak RSS, {large:,} vs {small:,} messages: +{growth:.1f} MB "
              f"(target < 20 MB: {verdict(growth < 20)})")  # fmt: skip
    # A token bucket starts full: over `wall` seconds the replicas may spend the rate's
    # units plus one burst (the broker's default), and no more.
    burst = Settings.model_fields["gmail_quota_burst_units"].default
    allowed = per_minute / 60 * replicas.wall + burst
    share = replicas.quota_share(per_minute)
    print()
    print(table(
        ["replicas on Redis", "listings of one user at once", "messages", "wall s",
         "combined messages/s", "combined units / (rate x wall + burst) (<= 1)",
         "combined quota used", "rate-limit answers (= 0)"],
        [["2", "2", f"{replicas.messages:,}", f"{replicas.wall:.1f}",
          f"{replicas.per_second():.0f}",
          f"{replicas.units / allowed:.4f} {verdict(replicas.units <= allowed)}",
          f"{share:.1%}", f"{replicas.refused} {verdict(replicas.refused == 0)}"]],
    ))  # fmt: skip


if __name__ == "__main__":
    main()
