"""Listing: complete Gmail listings of 1k, 25k and 100k messages, JSON and NDJSON,
beside the pattern an internal service would otherwise use (Google's Python client
library, its default page size, `list_next` until done) against the same sandbox.

Every Gmail call takes a fixed extra latency in the sandbox (Gmail's own is about
this order). "Gmail calls took" is the sum of the calls' durations as the broker
saw them (its upstream latency histogram): the listing's wall time can only
approach it. Each case runs three times on one fresh broker process (the median
is shown), so its peak memory (VmHWM) is that of listings of that size. The
broker runs on core 0; the sandbox and the clients on core 1.

A JSON listing past TOKEN_BROKER_JSON_LISTING_MAX_MESSAGES answers
`too_many_for_json` (shown as "capped"), having held at most that many messages.
The memory check compares the smallest and largest sizes in each mode (target:
growth under 20 MB for NDJSON, under 50 MB for JSON).

    .venv/bin/uv run python -m bench.listing [--latency 0.05] [--reference-sizes 1000 25000]
    .venv/bin/uv run python -m bench.listing --sizes 25000 1000000 --repeats 1 --reference-sizes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import time
from dataclasses import dataclass

import httpx

from bench.common import (
    LOAD_CORE,
    SERVER_CORE,
    System,
    connect_account,
    system,
    table,
    verdict,
)

SIZES = (1_000, 25_000, 100_000)
LIST = "gmail.messages.list"


@dataclass
class Measured:
    count: int
    calls: int
    wall: float
    upstream: float  # time the Gmail calls took, as the broker saw them
    cpu_per_page_ms: float
    peak_mb: float


def upstream_seconds(broker_url: str) -> float:
    metrics = httpx.get(f"{broker_url}/metrics").text
    prefix = 'token_broker_upstream_request_duration_seconds_sum{endpoint="gmail.messages.list"}'
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def gmail_calls(sut: System) -> int:
    return int(sut.control("GET", "/counters").json()["calls"].get(LIST, 0))


def broker_listing(
    sut: System, key: str, email: str, mode: str, repeats: int, json_max: int | None
) -> Measured:
    """The median of `repeats` listings by one fresh broker process (its peak memory is
    the peak of listings of that size)."""
    # This measures paging, not Gmail's quota (bench.details does): a quota out of the way.
    extra = {"json_listing_max_messages": str(json_max)} if json_max else {}
    broker = sut.start_broker(
        f"listing-{mode}-{email}", core=SERVER_CORE, gmail_quota_units_per_minute="10000000",
        **extra,
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {key}"}
    if mode == "ndjson":
        headers["Accept"] = "application/x-ndjson"
    url = f"{broker.url}/v1/accounts/{email}/messages"
    params = {"includeSpamTrash": "true"}
    try:
        with httpx.Client(headers=headers, timeout=600) as client:
            # Warm the process (key, token, connections, code paths): a one-message listing.
            client.get(url, params={**params, "limit": 1}).raise_for_status()
            cpu_before, calls_before = broker.process.cpu_seconds(), gmail_calls(sut)
            runs = [one_listing(sut, broker.url, client, url, params, mode) for _ in range(repeats)]
            cpu = broker.process.cpu_seconds() - cpu_before
            calls = gmail_calls(sut) - calls_before
        median = sorted(runs, key=lambda run: run.wall)[len(runs) // 2]
        median.cpu_per_page_ms = cpu / max(1, calls) * 1000
        median.peak_mb = broker.process.peak_rss_mb()
        return median
    finally:
        broker.stop()


def one_listing(
    sut: System, broker_url: str, client: httpx.Client, url: str, params: dict[str, str],
    mode: str,
) -> Measured:  # fmt: skip
    before_upstream, before_calls = upstream_seconds(broker_url), gmail_calls(sut)
    started = time.perf_counter()
    count = 0
    with client.stream("GET", url, params=params) as response:
        if mode == "json" and response.status_code == 400:
            problem = json.loads(response.read())
            if problem["code"] != "too_many_for_json":
                raise RuntimeError(f"listing failed: {problem}")
            count = -problem["max_messages"]  # capped: it held this many, then refused
        elif mode == "json":
            response.raise_for_status()
            count = json.loads(response.read())["count"]
        else:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith('{"id"'):
                    count += 1
                elif '"complete"' not in line:
                    raise RuntimeError(f"listing failed: {line[:200]}")
    wall = time.perf_counter() - started
    return Measured(
        count, gmail_calls(sut) - before_calls, wall,
        upstream_seconds(broker_url) - before_upstream, 0.0, 0.0,
    )  # fmt: skip


def reference_listing(sut: System, token: str) -> Measured:
    """What a service would write with Google's client: default page size, list_next."""
    from google.oauth2.credentials import Credentials
    from googleapiclient.discovery import build

    service = build(
        "gmail", "v1", credentials=Credentials(token), static_discovery=True,
        cache_discovery=False, client_options={"api_endpoint": sut.sandbox_url + "/"},
    )  # fmt: skip
    before = gmail_calls(sut)
    started = time.perf_counter()
    count = 0
    request = service.users().messages().list(userId="me", includeSpamTrash=True)
    while request is not None:
        page = request.execute()
        count += len(page.get("messages", []))
        request = service.users().messages().list_next(request, page)
    wall = time.perf_counter() - started
    return Measured(count, gmail_calls(sut) - before, wall, 0.0, 0.0, 0.0)


def warm_sandbox(sut: System, token: str) -> None:
    """Build the seeded mailbox and its search now, so no measurement pays for that."""
    httpx.get(
        f"{sut.sandbox_url}/gmail/v1/users/me/messages",
        params={"maxResults": 1, "includeSpamTrash": "true"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    ).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, default=0.05, help="added per Gmail call (s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--reference-sizes", type=int, nargs="*", default=[1_000, 25_000])
    parser.add_argument("--repeats", type=int, default=3, help="listings per case (median)")
    parser.add_argument(
        "--json-max", type=int, help="TOKEN_BROKER_JSON_LISTING_MAX_MESSAGES (default: its)"
    )
    args = parser.parse_args()

    rows, reference_rows = [], []
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {LOAD_CORE})  # the clients stay off the broker's core
    with system() as sut:
        setup = sut.start_broker("listing-setup")
        key = sut.api_key("listing")
        tokens = {}
        for size in args.sizes:
            email = f"user{size}@example.com"
            sut.control("POST", "/users", json={"email": email, "mailbox_size": size})
            asyncio.run(connect_account(setup.url, key, email))
            token = httpx.get(
                f"{setup.url}/v1/accounts/{email}/access-token",
                headers={"Authorization": f"Bearer {key}"},
            ).json()["access_token"]
            tokens[size] = token
            warm_sandbox(sut, token)
        setup.stop()
        sut.control("POST", "/faults", json={"endpoint": LIST, "kind": "latency",
                                              "delay": args.latency})  # fmt: skip
        results: dict[tuple[int, str], Measured] = {}
        for size in args.sizes:
            for mode in ("json", "ndjson"):
                measured = broker_listing(
                    sut, key, f"user{size}@example.com", mode, args.repeats, args.json_max
                )
                results[size, mode] = measured
                capped = measured.count < 0
                expected = math.ceil((-measured.count + 1 if capped else size) / 500)
                ratio = measured.wall / measured.upstream
                listed = f"capped at {-measured.count:,}" if capped else f"{measured.count:,}"
                rows.append([
                    f"{size:,}", mode, listed,
                    f"{measured.calls} {verdict(measured.calls == expected)}",
                    f"{measured.wall:.2f}", f"{measured.calls * args.latency:.2f}",
                    f"{measured.upstream:.2f}", f"{ratio:.2f}x {verdict(ratio <= 1.1)}",
                    f"{measured.cpu_per_page_ms:.2f}", f"{measured.peak_mb:.0f}",
                ])  # fmt: skip
        for size in args.reference_sizes:
            if size not in tokens:
                continue
            reference = reference_listing(sut, tokens[size])
            ours = results[size, "ndjson"].wall
            speedup = reference.wall / ours
            reference_rows.append([
                f"{size:,}", reference.calls, f"{reference.wall:.2f}",
                results[size, "ndjson"].calls, f"{ours:.2f}",
                f"{speedup:.1f}x" + (f" {verdict(speedup >= 4)}" if size == 25_000 else ""),
            ])  # fmt: skip

    print(table(
        ["messages", "mode", "listed", "Gmail calls (= ceil(n/500))", "wall s (median)",
         "calls x added latency s", "Gmail calls took s", "wall / Gmail time (<= 1.1x)",
         "broker CPU ms/page", "peak RSS MB"],
        rows,
    ))  # fmt: skip
    small, large = min(args.sizes), max(args.sizes)
    for mode, target in (("ndjson", 20), ("json", 50)):
        growth = results[large, mode].peak_mb - results[small, mode].peak_mb
        print(
            f"\n{mode.upper()} peak memory, {large:,} vs {small:,} messages: +{growth:.1f} MB "
            f"(target < {target} MB: {verdict(growth < target)})"
        )
    if reference_rows:
        print()
        print(table(
            ["messages", "google-api-python-client calls", "its wall s", "broker calls",
             "broker wall s (NDJSON)", "broker speed-up (25k: >= 4x)"],
            reference_rows,
        ))  # fmt: skip


if __name__ == "__main__":
    main()
