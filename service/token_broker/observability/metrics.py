"""Prometheus metrics. Label values are route templates, endpoint names and outcome
classes: never an account id, an email or a token.

Each app has its own registry. Under `serve --workers N` (N > 1) the CLI sets
PROMETHEUS_MULTIPROC_DIR, every worker writes its samples there, and `/metrics`
answers with the sum over workers.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self._http_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._token_series: dict[str, Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.http_requests = Counter(
            "token_broker_http_requests",
            "HTTP requests served, by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "token_broker_http_request_duration_seconds",
            "Time to serve an HTTP request (streams: until the last byte).",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.token_requests = Counter(
            "token_broker_access_token_requests",
            "Access-token requests by outcome: cache_hit, database, refreshed, waited, "
            "refreshed_elsewhere, force_throttled, reauthorization_required, unavailable.",
            ["outcome"],
            registry=registry,
        )
        self.refreshes = Counter(
            "token_broker_refreshes",
            "Upstream refreshes by outcome class: ok, permanent (grant dead), transient "
            "(gave up after retries), session_policy, rejected_client.",
            ["outcome", "trigger"],
            registry=registry,
        )
        self.upstream_requests = Counter(
            "token_broker_upstream_requests",
            "Requests to the provider by endpoint and HTTP status (or timeout, connection_error).",
            ["endpoint", "status"],
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "token_broker_upstream_request_duration_seconds",
            "Latency of requests to the provider, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.gmail_pages = Counter(
            "token_broker_gmail_pages", "Gmail list pages fetched.", registry=registry
        )
        self.gmail_retries = Counter(
            "token_broker_gmail_retries",
            "Gmail list retries by reason: rate_limited, server_error, timeout, "
            "connection_error, malformed.",
            ["reason"],
            registry=registry,
        )
        self.accounts = Gauge(
            "token_broker_accounts",
            "Connected accounts by status (counted every "
            "TOKEN_BROKER_METRICS_ACCOUNTS_INTERVAL_SECONDS, not per scrape).",
            ["status"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.webhook_deliveries = Counter(
            "token_broker_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered, retry, failed.",
            ["outcome"],
            registry=registry,
        )
        self.audit_dropped = Counter(
            "token_broker_audit_events_dropped",
            "Buffered audit events dropped because the database stayed away too long.",
            registry=registry,
        )
        self.gmail_quota_units = Counter(
            "token_broker_gmail_quota_units",
            "Gmail quota units spent, by method (messages.list, messages.get, ...).",
            ["method"],
            registry=registry,
        )
        self.gmail_quota_wait = Counter(
            "token_broker_gmail_quota_wait_seconds",
            "Seconds Gmail calls waited for the user's quota, by method.",
            ["method"],
            registry=registry,
        )
        self.gmail_quota_fallback = Gauge(
            "token_broker_gmail_quota_fallback",
            "1 while Redis is unreachable and this replica keeps the Gmail quota alone.",
            registry=registry,
            multiprocess_mode="max",
        )
        self.gmail_quota_redis_errors = Counter(
            "token_broker_gmail_quota_redis_errors",
            "Failed Redis calls for the shared Gmail quota.",
            registry=registry,
        )
        self.gmail_batches = Counter(
            "token_broker_gmail_batches", "Gmail batch requests sent.", registry=registry
        )
        self.gmail_messages_fetched = Counter(
            "token_broker_gmail_messages_fetched",
            "Messages asked of Gmail by outcome: ok, not_found, failed (permanent error or "
            "retries exhausted).",
            ["outcome"],
            registry=registry,
        )

        # Grant health: reasons and events by name only, never an account.
        self.refusals = Counter(
            "token_broker_refresh_refusals",
            "Refreshes the provider refused, by the reason the broker found (status_reason).",
            ["reason"],
            registry=registry,
        )
        self.status_changes = Counter(
            "token_broker_account_status_changes",
            "Account status changes by new status and reason (none: no reason).",
            ["status", "reason"],
            registry=registry,
        )
        self.accounts_by_reason = Gauge(
            "token_broker_accounts_by_reason",
            "Accounts by status and status_reason (none: no reason), counted every "
            "TOKEN_BROKER_GRANT_HEALTH_INTERVAL_SECONDS.",
            ["status", "reason"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.accounts_expiring = Gauge(
            "token_broker_accounts_expiring_within_day",
            "Active accounts whose grant is known to end within 24 hours.",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.risc_events = Counter(
            "token_broker_risc_events",
            "Security events accepted from Google (Cross-Account Protection), by event and "
            "outcome: applied, recorded, unknown_subject, superseded, ignored.",
            ["event", "outcome"],
            registry=registry,
        )
        self.risc_refused = Counter(
            "token_broker_risc_refused",
            "Security event tokens refused, by RFC 8935 error code (invalid_request, "
            "invalid_key, invalid_issuer, invalid_audience).",
            ["err"],
            registry=registry,
        )
        self._mailbox_metrics(registry)

    def _mailbox_metrics(self, registry: CollectorRegistry) -> None:
        self.gmail_watches = Gauge(
            "token_broker_gmail_watches",
            "Gmail watches by state, counted at scrape time: active, pending (to be made or "
            "failing), stopped, expiring (active, ending within a day).",
            ["state"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.gmail_watch_calls = Counter(
            "token_broker_gmail_watch_calls",
            "users.watch and users.stop calls by call and outcome: ok, failed, revoked.",
            ["call", "outcome"],
            registry=registry,
        )
        self.gmail_pushes = Counter(
            "token_broker_gmail_pushes",
            "Pub/Sub pushes by outcome: accepted, duplicate, unknown_address, not_watched, "
            "refused, malformed.",
            ["outcome"],
            registry=registry,
        )
        self.gmail_push_refusals = Counter(
            "token_broker_gmail_push_refusals",
            "Pushes refused, by reason: missing, malformed, signature, issuer, audience, "
            "service_account, expired, not_yet_valid, replayed.",
            ["reason"],
            registry=registry,
        )
        self.mailbox_webhooks = Counter(
            "token_broker_mailbox_webhooks",
            "mailbox.changed webhooks queued, by trigger: push, fallback.",
            ["trigger"],
            registry=registry,
        )
        self.mailbox_webhooks_coalesced = Counter(
            "token_broker_mailbox_webhooks_coalesced",
            "Pushes that did not need a webhook of their own: folded into one already due in "
            "their window, or saying nothing newer than the last one sent.",
            registry=registry,
        )
        self.gmail_fallback_checks = Counter(
            "token_broker_gmail_fallback_checks",
            "history.list checks of watched mailboxes that went quiet, by outcome: changed, "
            "unchanged, expired, failed.",
            ["outcome"],
            registry=registry,
        )
        self.gmail_history_pages = Counter(
            "token_broker_gmail_history_pages",
            "Gmail history.list pages fetched.",
            registry=registry,
        )

    def observe_http(self, route: str, method: str, status: int, elapsed: float) -> None:
        # Label lookups cost more than the increments: keep the children per series.
        key = (route, method, status)
        children = self._http_series.get(key)
        if children is None:
            children = (
                self.http_requests.labels(route, method, str(status)),
                self.http_duration.labels(route, method),
            )
            self._http_series[key] = children
        children[0].inc()
        children[1].observe(elapsed)

    def count_token_request(self, outcome: str) -> None:
        child = self._token_series.get(outcome)
        if child is None:
            child = self._token_series[outcome] = self.token_requests.labels(outcome)
        child.inc()

    def observe_upstream(self, endpoint: str, outcome: str, elapsed: float) -> None:
        self.upstream_requests.labels(endpoint, outcome).inc()
        self.upstream_duration.labels(endpoint).observe(elapsed)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            combined = CollectorRegistry()
            MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(combined))
        return bytes(generate_latest(self.registry))
