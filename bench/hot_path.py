"""Token hot path: the cached access-token endpoint against a plain FastAPI route.

Both are served the same way (one uvicorn worker, uvloop and httptools, pinned to
core 0); wrk drives them from core 1 at 32 and 128 connections, alternating, and the
median of the rounds is kept. The broker runs as in production: API-key auth,
metrics and buffered audit on, Postgres behind it (and not touched: a cache hit makes
no query and no upstream call). The per-client rate limit is switched off: it is a
policy (1,000 requests/s per client by default) that would otherwise answer most of
this load with 429; any non-2xx answer marks the run as failed.

    .venv/bin/uv run python -m bench.hot_path [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys

import httpx

from bench.common import (
    SERVER_CORE,
    Process,
    WrkResult,
    connect_account,
    free_port,
    system,
    table,
    verdict,
    wrk,
)


def median(results: list[WrkResult]) -> WrkResult:
    return WrkResult(
        requests_per_second=statistics.median(r.requests_per_second for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        non_2xx=sum(r.non_2xx for r in results),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--access-log", choices=["on", "off"], default="off", help="off is the production default"
    )
    args = parser.parse_args()

    with system() as sut:
        broker = sut.start_broker(
            "hot-path-broker",
            core=SERVER_CORE,
            access_log=str(args.access_log == "on").lower(),
            rate_limit_per_second="0",
        )
        reference_port = free_port()
        reference = Process(
            "hot-path-reference",
            [sys.executable, "-m", "bench.reference_app", "--port", str(reference_port)],
            core=SERVER_CORE,
        )
        try:
            reference_url = f"http://127.0.0.1:{reference_port}"
            reference.wait_http(f"{reference_url}/docs")
            key = sut.api_key("hot-path")
            subject = asyncio.run(connect_account(broker.url, key, "alice@example.com"))
            path = f"/v1/accounts/{subject}/access-token"
            headers = {"Authorization": f"Bearer {key}"}
            warm = httpx.get(broker.url + path, headers=headers)
            warm.raise_for_status()
            queries_before = sut.control("GET", "/counters").json()["calls"].get("token", 0)

            rows = []
            for connections in (32, 128):
                ours: list[WrkResult] = []
                theirs: list[WrkResult] = []
                for _ in range(args.rounds):
                    theirs.append(wrk(reference_url + path, connections=connections,
                                      seconds=args.seconds, headers={}))  # fmt: skip
                    ours.append(wrk(broker.url + path, connections=connections,
                                    seconds=args.seconds, headers=headers))  # fmt: skip
                b, r = median(ours), median(theirs)
                ratio_rps = b.requests_per_second / r.requests_per_second
                ratio_p99 = b.p99_ms / r.p99_ms
                rows.append([
                    connections,
                    f"{r.requests_per_second:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                    f"{b.requests_per_second:,.0f}", f"{b.p50_ms:.2f}", f"{b.p99_ms:.2f}",
                    f"{ratio_rps:.2f}x {verdict(ratio_rps >= 0.9 and b.non_2xx == 0)}",
                    f"{ratio_p99:.2f}x {verdict(ratio_p99 <= 1.5)}",
                    b.non_2xx,
                ])  # fmt: skip
            upstream_calls = (
                sut.control("GET", "/counters").json()["calls"].get("token", 0) - queries_before
            )
        finally:
            reference.stop()
            broker.stop()

    print(table(
        ["connections", "plain req/s", "plain p50 ms", "plain p99 ms", "broker req/s",
         "broker p50 ms", "broker p99 ms", "req/s vs plain (>= 0.9x)",
         "p99 vs plain (<= 1.5x)", "broker non-2xx"],
        rows,
    ))  # fmt: skip
    print(f"\nupstream token calls during the load: {upstream_calls} (target 0)")


if __name__ == "__main__":
    main()
