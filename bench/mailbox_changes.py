"""Mailbox changes: Gmail push turned into `mailbox.changed` webhooks, under a steady stream of
changes, with and without lost notifications.

N mailboxes are connected to one broker process (Postgres) with push on; the sandbox's
Pub/Sub pushes into it (its token checked like Google's), and a webhook receiver in this
process plays the consumer: on each `mailbox.changed` it asks for the account's changes
since its cursor. The sandbox's generator then changes the mailboxes at a steady rate
(Poisson arrivals; adds, relabels, deletions) for `--seconds`, once with every
notification delivered and once with `--drop-rate` of them lost. Reported per run:

- the time from a change in the sandbox to the first webhook that covers it (one carrying
  its history id or a later one), p50 and p99, for all changes and for those whose own
  notification was lost (caught by a later push or by the fallback check);
- webhooks per change (coalescing), and changes never announced (must be 0);
- Gmail quota units per change: the broker's own calls (watch renewals, fallback checks)
  and the consumer's changes requests, from the sandbox's call counters;
- whether the consumer's changes listed every change made (by message id and kind).

    .venv/bin/uv run python -m bench.mailbox_changes                 # 200 mailboxes (long)
    .venv/bin/uv run python -m bench.mailbox_changes --mailboxes 10 --seconds 20 \\
        --changes-per-second 2 --fallback 5                          # a small proof
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from bench.common import RESULTS, SERVER_CORE, System, connect_account, free_port, system, table
from google_sandbox.pubsub import DEFAULT_SERVICE_ACCOUNT, DEFAULT_TOPIC
from token_broker.services.webhooks import verify

SECRET = "bench-webhook-secret"
UNITS = {"gmail.history.list": 2, "gmail.getProfile": 1, "gmail.watch": 100, "gmail.stop": 50}


@dataclass
class Consumer:
    """The webhook receiver, and a consumer that follows each account's changes."""

    broker_url: str
    key: str
    cursors: dict[str, str] = field(default_factory=dict)
    webhooks: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    seen: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    pages: int = 0
    requests: int = 0
    failures: int = 0
    _locks: dict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def app(self, http: httpx.AsyncClient) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.body()
            if not verify(SECRET, request.headers["token-broker-signature"], body, now=time.time()):
                return Response(status_code=401)
            event = json.loads(body)
            if event["type"] == "mailbox.changed":
                self.webhooks.append((time.time(), event))
                task = asyncio.create_task(self.follow(http, event["account"]["email"]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return Response(status_code=204)

        return app

    async def follow(self, http: httpx.AsyncClient, email: str) -> None:
        async with self._locks[email]:
            self.requests += 1
            answer = await http.get(
                f"{self.broker_url}/v1/accounts/{email}/changes",
                params={"cursor": self.cursors[email]},
                headers={"Authorization": f"Bearer {self.key}"},
            )
            if answer.status_code != 200:
                self.failures += 1
                return
            body = answer.json()
            self.cursors[email] = body["cursor"]
            self.pages += body["pages"]
            self.seen[email] += body["changes"]

    async def settle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@dataclass
class Result:
    drop_rate: float
    changes: int
    latencies: list[float]
    dropped_latencies: list[float]
    dropped: int
    caught_by_fallback: int
    unannounced: int
    webhooks: int
    broker_units: int
    consumer_units: int
    consumer_complete: bool

    def row(self) -> list[object]:
        def ms(values: list[float], share: float) -> str:
            return f"{percentile(values, share) * 1000:,.0f}" if values else "-"

        return [
            f"{self.drop_rate:.0%}", f"{self.changes:,}",
            ms(self.latencies, 0.5), ms(self.latencies, 0.99),
            f"{self.dropped:,}", ms(self.dropped_latencies, 0.5),
            ms(self.dropped_latencies, 0.99),
            f"{max(self.dropped_latencies) * 1000:,.0f}" if self.dropped_latencies else "-",
            f"{self.caught_by_fallback:,}", f"{self.webhooks / self.changes:.2f}",
            f"{self.broker_units / self.changes:.2f}", f"{self.consumer_units / self.changes:.2f}",
            f"{self.unannounced}", "yes" if self.consumer_complete else "NO",
        ]  # fmt: skip


async def run_once(
    sut: System, consumer: Consumer, http: httpx.AsyncClient, emails: list[str],
    args: argparse.Namespace, drop_rate: float,
) -> Result:  # fmt: skip
    control = f"{sut.sandbox_url}/_sandbox"
    await http.put(f"{control}/pubsub", json={"drop_rate": drop_rate})
    await http.delete(f"{control}/counters")
    webhooks_before = len(consumer.webhooks)
    pages_before = consumer.pages
    for email in emails:
        consumer.seen[email] = []
    started = await http.post(
        f"{control}/generator",
        json={"changes_per_second": args.changes_per_second, "seconds": args.seconds,
              "emails": emails},
    )  # fmt: skip
    started.raise_for_status()
    await asyncio.sleep(args.seconds)
    while (await http.get(f"{control}/generator")).json()["running"]:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    # Let the last windows close, the fallback catch what was lost, the consumer catch up.
    await asyncio.sleep(args.window + args.fallback + 5)
    await consumer.settle()
    changes = (await http.get(f"{control}/generator/changes")).json()
    notifications = (await http.get(f"{control}/pubsub/notifications")).json()
    counters = (await http.get(f"{control}/counters")).json()["calls"]

    lost = {(n["email"], n["history_id"]) for n in notifications
            if n["outcome"] in ("dropped", "rate_limited", "failed")}  # fmt: skip
    by_account: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for at, event in consumer.webhooks[webhooks_before:]:
        by_account[event["account"]["email"]].append(
            (at, int(event["history_id"]), event["trigger"])
        )
    latencies, dropped_latencies = [], []
    unannounced = fallback = dropped = 0
    for change in changes:
        history_id = int(change["history_id"])
        covering = [w for w in by_account[change["email"]] if w[1] >= history_id]
        was_lost = (change["email"], history_id) in lost
        dropped += was_lost
        if not covering:
            unannounced += 1
            continue
        at, _, trigger = min(covering)
        latencies.append(at - change["at"])
        if was_lost:
            dropped_latencies.append(at - change["at"])
            fallback += trigger == "fallback"
    units = sum(UNITS.get(endpoint, 0) * count for endpoint, count in counters.items())
    consumer_units = 2 * (consumer.pages - pages_before)
    complete = all(
        {(c["message_id"]) for c in changes if c["email"] == email}
        <= {c["message_id"] for c in consumer.seen[email]}
        for email in emails
    )
    return Result(
        drop_rate, len(changes), latencies, dropped_latencies, dropped, fallback, unannounced,
        len(consumer.webhooks) - webhooks_before, units - consumer_units, consumer_units, complete,
    )  # fmt: skip


async def bench(sut: System, args: argparse.Namespace) -> list[Result]:
    hook_port = free_port()
    broker = sut.start_broker(
        "mailbox-changes", core=SERVER_CORE,
        gmail_push_topic=DEFAULT_TOPIC,
        gmail_push_audience="https://broker.bench/v1/gmail/push",
        gmail_push_service_account=DEFAULT_SERVICE_ACCOUNT,
        gmail_push_coalesce_seconds=str(args.window),
        gmail_push_fallback_seconds=str(args.fallback),
        webhook_url=f"http://127.0.0.1:{hook_port}/hook",
        webhook_secret=SECRET,
        log_level="WARNING",
    )  # fmt: skip
    try:
        key = sut.api_key("mailbox-changes")
        async with httpx.AsyncClient(timeout=120) as http:
            consumer = Consumer(broker.url, key)
            server = uvicorn.Server(
                uvicorn.Config(
                    consumer.app(http),
                    host="127.0.0.1",
                    port=hook_port,
                    log_level="warning",
                    access_log=False,
                )
            )
            serving = asyncio.create_task(server.serve())
            control = f"{sut.sandbox_url}/_sandbox"
            await http.put(
                f"{control}/pubsub",
                json={"push_endpoint": f"{broker.url}/v1/gmail/push",
                      "audience": "https://broker.bench/v1/gmail/push"},
            )  # fmt: skip
            emails = [f"box{i:04d}@example.com" for i in range(args.mailboxes)]
            gate = asyncio.Semaphore(8)

            async def connect(email: str) -> None:
                async with gate:
                    await http.post(
                        f"{control}/users", json={"email": email, "mailbox_size": args.mailbox_size}
                    )
                    await connect_account(broker.url, key, email)

            await asyncio.gather(*(connect(email) for email in emails))
            deadline = time.monotonic() + 120
            while len((await http.get(f"{control}/pubsub")).json()["watches"]) < len(emails):
                if time.monotonic() > deadline:
                    raise RuntimeError("not every mailbox got a watch")
                await asyncio.sleep(0.5)
            for email in emails:
                start = await http.get(
                    f"{broker.url}/v1/accounts/{email}/changes",
                    headers={"Authorization": f"Bearer {key}"},
                )
                consumer.cursors[email] = start.json()["cursor"]
            results = [await run_once(sut, consumer, http, emails, args, rate)
                       for rate in (0.0, args.drop_rate)]  # fmt: skip
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            return results
    finally:
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mailboxes", type=int, default=200)
    parser.add_argument("--mailbox-size", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--changes-per-second", type=float, default=20,
                        help="across all mailboxes")  # fmt: skip
    parser.add_argument("--drop-rate", type=float, default=0.1)
    parser.add_argument("--window", type=float, default=2.0, help="coalescing window (s)")
    parser.add_argument("--fallback", type=float, default=10.0, help="fallback check after (s)")
    args = parser.parse_args()
    with system() as sut:
        results = asyncio.run(bench(sut, args))
    header = [
        "pushes lost", "changes", "change to webhook p50 ms", "p99 ms", "changes with lost push",
        "their p50 ms", "their p99 ms", "their max ms", "caught by fallback", "webhooks / change",
        "broker units / change", "consumer units / change", "never announced (= 0)",
        "consumer saw every change",
    ]  # fmt: skip
    print(
        f"{args.mailboxes} mailboxes, {args.changes_per_second} changes/s for "
        f"{args.seconds:.0f} s, window {args.window} s, fallback {args.fallback} s"
    )
    print(table(header, [result.row() for result in results]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mailbox_changes.json").write_text(
        json.dumps(
            [
                {
                    **vars(r),
                    "latencies": None,
                    "dropped_latencies": None,
                    "p50": percentile(r.latencies, 0.5),
                    "p99": percentile(r.latencies, 0.99),
                    "lost_p50": percentile(r.dropped_latencies, 0.5),
                    "lost_p99": percentile(r.dropped_latencies, 0.99),
                }
                for r in results
            ],
            indent=1,
        )
    )
    if any(r.unannounced or not r.consumer_complete for r in results):
        raise SystemExit("some changes were never announced, or the consumer missed some")


if __name__ == "__main__":
    main()
