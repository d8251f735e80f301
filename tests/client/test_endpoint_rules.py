"""The newer endpoints' rules, pinned with respx: authorization outcomes, message details,
single messages, mailbox changes (and following a cursor), what each problem carries, and
grant health (scoped tokens and the cache, account health, scope upgrades)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
from google.auth.credentials import with_scopes_if_required
from google.auth.exceptions import RefreshError

from tests.client.broker_stub import BROKER, FAST, ndjson, problem
from tests.support.hygiene import register_secret
from token_broker_client import (
    AccessDenied,
    Account,
    AmbiguousAccount,
    AuthorizationNotFound,
    BrokerClient,
    BrokerProblem,
    Change,
    ChangesSummary,
    ConnectedAccount,
    CursorExpired,
    DetailsSummary,
    IncompleteStream,
    MessageNotFound,
    NotFetched,
    ScopeNotGranted,
    SyncBrokerClient,
    TooManyForJson,
    UpstreamUnavailable,
    problem_class,
)
from token_broker_client.google import BrokerCredentials

ALICE = "/v1/accounts/alice@example.com"
OUTCOME = {"id": "5f0c2a0e-1b7e-4c55-9a43-2f1d1c0e8a11", "created_at": "2026-11-21T06:30:00Z",
           "expires_at": "2026-11-21T06:40:00Z", "completed_at": None}  # fmt: skip


def outcome(**fields: Any) -> httpx.Response:
    return httpx.Response(200, json={**OUTCOME, **fields})


def test_an_authorization_is_started_with_its_id_then_its_outcome_read(
    broker_api: respx.MockRouter,
) -> None:
    broker_api.post("/v1/authorizations").mock(return_value=httpx.Response(201, json={
        "id": OUTCOME["id"], "authorization_url": "https://accounts.example/auth?state=s",
        "state": "s", "expires_at": "2026-11-21T06:40:00Z"}))  # fmt: skip
    path = f"/v1/authorizations/{OUTCOME['id']}"
    read = broker_api.get(path).mock(side_effect=[
        outcome(status="pending"),
        outcome(status="connected", completed_at="2026-11-21T06:31:02.5Z",
                account={"id": "acc-1", "subject": "1098", "email": "alice@example.com"}),
        outcome(status="failed", completed_at="2026-11-21T06:31:02Z",
                error={"code": "access_denied", "detail": "The user did not grant access."}),
        problem("authorization_not_found", 404),
    ])  # fmt: skip
    with SyncBrokerClient(BROKER, "tbk_test") as broker:
        started = broker.start_authorization(return_to="https://app.example/connected")
        assert started.id == OUTCOME["id"]
        pending = broker.get_authorization(started.id)
        assert (pending.status, pending.account, pending.error) == ("pending", None, None)
        assert pending.completed_at is None
        assert pending.expires_at == datetime(2026, 11, 21, 6, 40, tzinfo=UTC)
        connected = broker.get_authorization(started.id)
        assert connected.account == ConnectedAccount("acc-1", "1098", "alice@example.com")
        assert connected.completed_at == datetime(2026, 11, 21, 6, 31, 2, 500000, tzinfo=UTC)
        failed = broker.get_authorization(started.id)
        assert failed.account is None
        assert failed.error is not None
        assert problem_class(failed.error.code) is AccessDenied
        with pytest.raises(AuthorizationNotFound):
            broker.get_authorization(started.id)
    assert read.call_count == 4
    assert read.calls[0].request.headers["authorization"] == "Bearer tbk_test"


def test_authorization_ids_and_message_ids_are_one_path_segment(
    broker_api: respx.MockRouter,
) -> None:
    route = broker_api.get(url__regex=r".*").mock(return_value=problem("not_found", 404))
    with SyncBrokerClient(BROKER, "tbk_test") as broker:
        with pytest.raises(BrokerProblem):
            broker.get_authorization("../accounts")
        with pytest.raises(BrokerProblem):
            broker.get_message("alice@example.com", "a/b?c")
        with pytest.raises(ValueError, match="message_id"):
            broker.get_message("alice@example.com", "")
    assert [call.request.url.raw_path for call in route.calls] == [
        b"/v1/authorizations/..%2Faccounts",
        b"/v1/accounts/alice@example.com/messages/a%2Fb%3Fc?format=full",
    ]


GMAIL = [
    {"id": "m0", "threadId": "t0", "labelIds": ["INBOX"], "snippet": "Hello",
     "payload": {"headers": [{"name": "Subject", "value": "Hi"}]}},
    {"id": "m2", "threadId": "t2", "labelIds": ["INBOX", "UNREAD"], "snippet": "",
     "payload": {"headers": [{"name": "Subject", "value": "Re: Hi"}]}},
]  # fmt: skip
GONE = {"id": "m1", "threadId": "t1", "status": 404, "reason": "notFound"}
DETAILS_DONE = {"status": "complete", "count": 3, "pages": 1, "result_size_estimate": 3,
                "fetched": 2, "batches": 1, "not_fetched_count": 1, "not_fetched": [GONE]}  # fmt: skip
DETAILS_SUMMARY = DetailsSummary(
    count=3, pages=1, result_size_estimate=3, fetched=2, batches=1, not_fetched_count=1,
    not_fetched=(NotFetched("m1", "t1", 404, "notFound"),),
)  # fmt: skip


async def test_a_listing_with_details_sends_format_and_headers_and_reads_gmails_resources(
    broker_api: respx.MockRouter,
) -> None:
    body = {key: value for key, value in DETAILS_DONE.items() if key != "status"}
    route = broker_api.get(f"{ALICE}/messages").mock(
        return_value=httpx.Response(200, json={"messages": GMAIL, **body})
    )
    async with BrokerClient(BROKER, "tbk_test") as broker:
        listing = await broker.list_message_details(
            "alice@example.com", format="metadata", metadata_headers=["Subject", "From"],
            q="is:unread", label_ids=["INBOX"], limit=3,
        )  # fmt: skip
    assert listing.messages == tuple(GMAIL)  # Gmail's resources, unchanged
    assert listing.summary == DETAILS_SUMMARY
    assert listing.count == 3
    assert "Re: Hi" not in repr(listing)  # a mailbox's content is not a repr
    request = route.calls[0].request
    assert request.headers["accept"] == "application/json"
    assert request.url.params.multi_items() == [
        ("q", "is:unread"), ("labelIds", "INBOX"), ("limit", "3"), ("format", "metadata"),
        ("metadataHeaders", "Subject"), ("metadataHeaders", "From"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("lines", "received", "error"),
    [
        ((*GMAIL, DETAILS_DONE), 2, None),
        ((*GMAIL,), 2, IncompleteStream),  # no final line
        ((GMAIL[0], DETAILS_DONE), 1, IncompleteStream),  # a message line lost
        ((*GMAIL, {"status": "failed", "count": 3, "pages": 1, "fetched": 2, "error": {
            "code": "upstream_unavailable", "status": 503, "retry_after": 4}}), 2,
         UpstreamUnavailable),
    ],
    ids=["complete", "no-final-line", "fetched-disagrees", "failed"],
)  # fmt: skip
def test_a_details_stream_counts_the_messages_fetched_not_those_listed(
    broker_api: respx.MockRouter,
    lines: tuple[dict[str, Any], ...],
    received: int,
    error: type[Exception] | None,
) -> None:
    route = broker_api.get(f"{ALICE}/messages").mock(
        return_value=httpx.Response(200, content=ndjson(*lines))
    )
    with SyncBrokerClient(BROKER, "tbk_test") as broker:
        stream = broker.stream_message_details("alice@example.com", format="minimal")
        seen: list[dict[str, Any]] = []

        def read() -> None:
            seen.extend(stream)

        if error is None:
            read()
            assert stream.summary == DETAILS_SUMMARY
        else:
            with pytest.raises(error) as raised:
                read()
            assert stream.summary is None
            if isinstance(raised.value, UpstreamUnavailable):
                assert raised.value.retry_after == 4
    assert [message["id"] for message in seen] == [m["id"] for m in GMAIL][:received]
    assert route.calls[0].request.headers["accept"] == "application/x-ndjson"
    assert route.calls[0].request.url.params.multi_items() == [("format", "minimal")]


async def test_one_message_in_a_format_and_a_missing_one(broker_api: respx.MockRouter) -> None:
    route = broker_api.get(f"{ALICE}/messages/m0").mock(
        side_effect=[httpx.Response(200, json=GMAIL[0]), problem("message_not_found", 404)]
    )
    async with BrokerClient(BROKER, "tbk_test", retry=FAST) as broker:
        message = await broker.get_message(
            "alice@example.com", "m0", format="metadata", metadata_headers=["Subject"]
        )
        assert message == GMAIL[0]
        with pytest.raises(MessageNotFound):
            await broker.get_message("alice@example.com", "m0")
        with pytest.raises(TypeError, match="list of strings"):
            await broker.get_message("alice@example.com", "m0", metadata_headers="Subject")
    assert [call.request.url.params.multi_items() for call in route.calls] == [
        [("format", "metadata"), ("metadataHeaders", "Subject")],
        [("format", "full")],
    ]


async def test_too_many_for_json_says_how_many_a_json_answer_holds(
    broker_api: respx.MockRouter,
) -> None:
    route = broker_api.get(f"{ALICE}/messages").mock(
        return_value=problem("too_many_for_json", 400, max_messages=1000)
    )
    async with BrokerClient(BROKER, "tbk_test", retry=FAST) as broker:
        with pytest.raises(TooManyForJson) as raised:
            await broker.list_message_details("alice@example.com", format="full")
    assert raised.value.max_messages == 1000
    assert route.call_count == 1  # not retried: the same request fails the same way


CHANGES = [
    {"type": "message_added", "history_id": "10452", "message_id": "m9", "thread_id": "t9",
     "label_ids": ["INBOX", "UNREAD"]},
    {"type": "labels_removed", "history_id": "10467", "message_id": "m9", "thread_id": "t9",
     "label_ids": ["UNREAD"]},
]  # fmt: skip


def changes_done(cursor: str, count: int = 2) -> dict[str, Any]:
    return {"status": "complete", "count": count, "pages": 1, "cursor": cursor,
            "history_id": "10467"}  # fmt: skip


def changes_json(cursor: str, changes: list[dict[str, Any]]) -> httpx.Response:
    done = changes_done(cursor, len(changes))
    del done["status"]
    return httpx.Response(200, json={"changes": changes, **done})


def cursor_expired(fresh: str) -> httpx.Response:
    return problem("cursor_expired", 410, cursor=fresh, history_id="20001")


def changes_stream(cursor: str) -> httpx.Response:
    return httpx.Response(200, content=ndjson(*CHANGES, changes_done(cursor)))


async def test_changes_since_a_cursor_in_json_and_as_a_stream(
    broker_api: respx.MockRouter,
) -> None:
    route = broker_api.get(f"{ALICE}/changes").mock(
        side_effect=[
            changes_json("c0", []),
            changes_json("c1", CHANGES),
            changes_stream("c2"),
            httpx.Response(200, content=ndjson(*CHANGES)),
            cursor_expired("c-fresh"),
        ]
    )
    async with BrokerClient(BROKER, "tbk_test", retry=FAST) as broker:
        assert await broker.changes_cursor("alice@example.com") == "c0"
        listed = await broker.list_changes(
            "alice@example.com", "c0", label_id="INBOX",
            history_types=["messageAdded", "labelRemoved"],
        )  # fmt: skip
        assert listed.changes == tuple(Change.from_json(change) for change in CHANGES)
        assert listed.changes[0] == Change(
            "message_added", "10452", "m9", "t9", ("INBOX", "UNREAD")
        )
        assert (listed.cursor, listed.count) == ("c1", 2)
        async with broker.stream_changes("alice@example.com", "c1") as stream:
            streamed = [change async for change in stream]
        assert streamed == list(listed.changes)
        assert stream.summary == ChangesSummary(count=2, pages=1, cursor="c2", history_id="10467")
        with pytest.raises(IncompleteStream):
            await broker.stream_changes("alice@example.com", "c2").collect()
        with pytest.raises(CursorExpired) as expired:
            await broker.list_changes("alice@example.com", "c2")
    assert (expired.value.cursor, expired.value.history_id) == ("c-fresh", "20001")
    assert expired.value.status == 410
    assert [call.request.url.params.multi_items() for call in route.calls] == [
        [],
        [("cursor", "c0"), ("labelId", "INBOX"), ("historyTypes", "messageAdded"),
         ("historyTypes", "labelRemoved")],
        [("cursor", "c1")],
        [("cursor", "c2")],
        [("cursor", "c2")],
    ]  # fmt: skip


class Consumer:
    """What a service does with changes: applies them, and relists when it must."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def apply(self, change: Change) -> None:
        self.events.append(f"{change.type} {change.message_id}")

    async def relist(self, cursor: str) -> None:
        self.events.append(f"relist, then from {cursor}")


def cursors_sent(route: respx.Route) -> list[str | None]:
    return [call.request.url.params.get("cursor") for call in route.calls]


async def test_following_a_cursor_applies_each_change_and_returns_where_to_continue(
    broker_api: respx.MockRouter,
) -> None:
    route = broker_api.get(f"{ALICE}/changes").mock(return_value=changes_stream("c1"))
    consumer = Consumer()
    async with BrokerClient(BROKER, "tbk_test") as broker:
        summary = await broker.follow_changes(
            "alice@example.com", "c0", consumer.apply, on_relist=consumer.relist,
            history_types=["messageAdded"],
        )  # fmt: skip
    assert summary.cursor == "c1"
    assert consumer.events == ["message_added m9", "labels_removed m9"]
    assert route.calls[0].request.url.params.multi_items() == [
        ("cursor", "c0"), ("historyTypes", "messageAdded")
    ]  # fmt: skip


async def test_an_expired_cursor_is_relisted_then_followed_from_the_fresh_cursor(
    broker_api: respx.MockRouter,
) -> None:
    route = broker_api.get(f"{ALICE}/changes").mock(
        side_effect=[cursor_expired("c-fresh"), changes_stream("c1")]
    )
    consumer = Consumer()
    async with BrokerClient(BROKER, "tbk_test") as broker:
        summary = await broker.follow_changes(
            "alice@example.com", "c-old", consumer.apply, on_relist=consumer.relist
        )
    assert summary.cursor == "c1"
    # Relisted first; then what changed since the fresh cursor, taken before the relist.
    assert consumer.events == ["relist, then from c-fresh", "message_added m9", "labels_removed m9"]
    assert cursors_sent(route) == ["c-old", "c-fresh"]


async def test_without_a_cursor_the_mailbox_is_relisted_from_the_present(
    broker_api: respx.MockRouter,
) -> None:
    route = broker_api.get(f"{ALICE}/changes").mock(
        side_effect=[changes_json("c0", []), changes_stream("c1")]
    )
    consumer = Consumer()
    async with BrokerClient(BROKER, "tbk_test") as broker:
        summary = await broker.follow_changes(
            "alice@example.com", None, consumer.apply, on_relist=consumer.relist
        )
    assert summary.cursor == "c1"
    assert consumer.events == ["relist, then from c0", "message_added m9", "labels_removed m9"]
    assert cursors_sent(route) == [None, "c0"]


async def test_an_expired_cursor_without_a_relist_or_twice_is_raised(
    broker_api: respx.MockRouter,
) -> None:
    route = broker_api.get(f"{ALICE}/changes").mock(return_value=cursor_expired("c-fresh"))
    consumer = Consumer()
    async with BrokerClient(BROKER, "tbk_test") as broker:
        with pytest.raises(CursorExpired) as alone:
            await broker.follow_changes("alice@example.com", "c-old", consumer.apply)
        assert alone.value.cursor == "c-fresh"
        assert consumer.events == []
        # A fresh cursor that expires at once again: relisted once, then handed back.
        with pytest.raises(CursorExpired):
            await broker.follow_changes(
                "alice@example.com", "c-old", consumer.apply, on_relist=consumer.relist
            )
    assert consumer.events == ["relist, then from c-fresh"]
    assert cursors_sent(route) == ["c-old", "c-old", "c-fresh"]


def test_the_sync_client_follows_a_cursor_and_recovers_the_same_way(
    broker_api: respx.MockRouter,
) -> None:
    route = broker_api.get(f"{ALICE}/changes").mock(
        side_effect=[
            cursor_expired("c-fresh"),
            httpx.Response(200, content=ndjson(CHANGES[0])),  # cut short
            changes_stream("c1"),
        ]
    )
    applied: list[str] = []
    kept: list[str] = ["c-old"]  # the cursor the service keeps, e.g. in its database
    with SyncBrokerClient(BROKER, "tbk_test") as broker:

        def follow() -> None:
            summary = broker.follow_changes(
                "alice@example.com", kept[-1], lambda change: applied.append(change.message_id),
                on_relist=kept.append,  # relisted: keep the fresh cursor with the listing
            )  # fmt: skip
            kept.append(summary.cursor)

        with pytest.raises(IncompleteStream):
            follow()
        assert kept == ["c-old", "c-fresh"]
        follow()  # again, from the fresh cursor: no second relist
    assert kept == ["c-old", "c-fresh", "c1"]
    assert applied == ["m9", "m9", "m9"]  # the change cut short came again: apply idempotently
    assert cursors_sent(route) == ["c-old", "c-fresh", "c-fresh"]


@pytest.mark.parametrize(
    ("code", "status", "extension", "attribute", "expected"),
    [
        ("ambiguous_account", 409, {"subjects": ["1098", "2044"]}, "subjects", ["1098", "2044"]),
        ("too_many_for_json", 400, {"max_messages": 200000}, "max_messages", 200000),
        ("cursor_expired", 410, {"cursor": "v1.a.b", "history_id": "9"}, "cursor", "v1.a.b"),
        ("cursor_expired", 410, {"cursor": "v1.a.b", "history_id": "9"}, "history_id", "9"),
        ("unknown_label", 400, {"label_id": "Label_12"}, "label_id", "Label_12"),
        ("scope_not_granted", 403, {"missing_scopes": ["gmail.readonly"]}, "missing_scopes",
         ["gmail.readonly"]),
        ("scope_not_allowed", 400, {"scopes_not_allowed": ["drive"]}, "scopes_not_allowed",
         ["drive"]),
        ("upstream_error", 502, {"gmail_reason": "failedPrecondition"}, "gmail_reason",
         "failedPrecondition"),
        ("not_ready", 503, {"checks": {"database": "ok", "keyring": "failed: no key"}}, "checks",
         {"database": "ok", "keyring": "failed: no key"}),
        ("validation_failed", 422, {"errors": [{"loc": ["query"], "msg": "bad"}]}, "errors",
         [{"loc": ["query"], "msg": "bad"}]),
        ("account_mismatch", 403, {"authorization_url": "https://b.example/r"},
         "authorization_url", "https://b.example/r"),
        ("upstream_rate_limited", 429, {"retry_after": 7}, "retry_after", 7),
    ],
)  # fmt: skip
def test_each_problem_carries_its_extra_fields(
    code: str, status: int, extension: dict[str, Any], attribute: str, expected: object
) -> None:
    answer = problem(code, status, **extension)
    raised = problem_class(code)(answer.json(), status=status)
    assert raised.problem_code == code
    assert getattr(raised, attribute) == expected
    # A body without them: empty values, never an error.
    bare = problem_class(code)({"code": code}, status=status)
    assert getattr(bare, attribute) in (None, [], {})


def test_ambiguous_account_names_the_subjects_to_use(broker_api: respx.MockRouter) -> None:
    broker_api.get(f"{ALICE}/messages/m0").mock(
        return_value=problem("ambiguous_account", 409, subjects=["1098", "2044"])
    )
    with SyncBrokerClient(BROKER, "tbk_test") as broker, pytest.raises(AmbiguousAccount) as raised:
        broker.get_message("alice@example.com", "m0")
    assert raised.value.subjects == ["1098", "2044"]


# Grant health: scoped tokens, account health, scope upgrades.
SCOPE = "https://www.googleapis.com/auth/"
READONLY, LABELS = SCOPE + "gmail.readonly", SCOPE + "gmail.labels"
GRANTED = ["openid", SCOPE + "userinfo.email", READONLY]  # in Google's spelling


def token(value: str, scopes: list[str]) -> httpx.Response:
    return httpx.Response(200, json={
        "access_token": value, "token_type": "Bearer", "expires_at": "2030-01-01T00:00:00Z",
        "expires_in": 3599, "scopes": scopes})  # fmt: skip


async def test_a_cached_token_serves_a_scoped_request_only_if_the_broker_would(
    broker_api: respx.MockRouter,
) -> None:
    link = "http://broker.test/v1/oauth/reauthorize?link=abc"
    route = broker_api.get(f"{ALICE}/access-token").mock(side_effect=[
        token("ya29.granted", GRANTED),
        problem("scope_not_granted", 403, missing_scopes=[LABELS], authorization_url=link),
        token("ya29.upgraded", [*GRANTED, LABELS]),
    ])  # fmt: skip
    async with BrokerClient(BROKER, "tbk_test", retry=FAST) as broker:
        first = await broker.access_token("alice@example.com")
        # Held scopes, in either spelling (`email` is userinfo.email): the cached token.
        for scopes in ([READONLY], ["email", READONLY], [SCOPE + "userinfo.email"]):
            cached = await broker.access_token("alice@example.com", scopes=scopes)
            assert cached.access_token == first.access_token
        assert route.call_count == 1
        # One it lacks: the broker decides, and refuses with the link that adds it.
        with pytest.raises(ScopeNotGranted) as refused:
            await broker.access_token("alice@example.com", scopes=[READONLY, LABELS])
        assert refused.value.missing_scopes == [LABELS]
        assert refused.value.authorization_url == link
        assert route.call_count == 2  # refused, not retried
        # The cached token still serves what it holds.
        kept = await broker.access_token("alice@example.com", scopes=["email"])
        assert kept.access_token == "ya29.granted"
        # After the upgrade the broker's token holds it, and is cached in its place.
        upgraded = await broker.access_token("alice@example.com", scopes=[LABELS])
        assert upgraded.access_token == "ya29.upgraded"
        again = await broker.access_token("alice@example.com", scopes=[LABELS, "email"])
        assert again.access_token == "ya29.upgraded"
        with pytest.raises(TypeError, match="list of strings"):
            await broker.access_token("alice@example.com", scopes=LABELS)
    assert route.call_count == 3
    assert [call.request.url.params.multi_items() for call in route.calls] == [
        [("min_ttl", "300")],
        [("min_ttl", "300"), ("scope", READONLY), ("scope", LABELS)],
        [("min_ttl", "300"), ("scope", LABELS)],
    ]


ACCOUNT = {"id": "acc-1", "subject": "1098", "email": "alice@example.com",
           "email_verified": True, "status": "revoked", "status_reason": "expired_testing",
           "status_detail": "Google answered invalid_grant; this grant was due to end.",
           "status_changed_at": "2026-12-08T09:14:03Z", "scopes": GRANTED,
           "granted_at": "2026-12-01T09:14:02Z", "grant_expires_at": "2026-12-08T09:14:02Z",
           "created_at": "2026-12-01T09:14:02Z", "updated_at": "2026-12-08T09:14:03Z",
           "last_refreshed_at": None, "access_token_expires_at": None}  # fmt: skip


def test_accounts_carry_their_health_and_list_by_status_and_reason(
    broker_api: respx.MockRouter,
) -> None:
    route = broker_api.get("/v1/accounts").mock(side_effect=[
        httpx.Response(200, json={"items": [ACCOUNT], "next_cursor": "p2"}),
        httpx.Response(200, json={"items": [{**ACCOUNT, "id": "acc-2"}], "next_cursor": None}),
    ])  # fmt: skip
    with SyncBrokerClient(BROKER, "tbk_test") as broker:
        accounts = list(
            broker.iter_accounts(status="revoked", reason="expired_testing", page_size=1)
        )
    assert [account.id for account in accounts] == ["acc-1", "acc-2"]
    account = accounts[0]
    assert (account.status, account.status_reason) == ("revoked", "expired_testing")
    assert account.status_detail == ACCOUNT["status_detail"]
    assert account.email_verified is True
    assert account.status_changed_at == datetime(2026, 12, 8, 9, 14, 3, tzinfo=UTC)
    assert account.granted_at == datetime(2026, 12, 1, 9, 14, 2, tzinfo=UTC)
    assert account.grant_expires_at == datetime(2026, 12, 8, 9, 14, 2, tzinfo=UTC)
    assert account.scopes == tuple(GRANTED)
    filters = [("status", "revoked"), ("reason", "expired_testing")]
    assert [call.request.url.params.multi_items() for call in route.calls] == [
        [*filters, ("limit", "1")],
        [*filters, ("cursor", "p2"), ("limit", "1")],
    ]
    # A broker older than grant health: the new fields are None (or False), not an error.
    older = {k: v for k, v in ACCOUNT.items() if k not in {
        "email_verified", "status_reason", "status_detail", "status_changed_at", "granted_at",
        "grant_expires_at"}}  # fmt: skip
    parsed = Account.from_json({**older, "status": "active"})
    assert (parsed.status_reason, parsed.grant_expires_at, parsed.email_verified) == (
        None, None, False
    )  # fmt: skip


async def test_a_scope_upgrade_starts_an_authorization_for_the_account(
    broker_api: respx.MockRouter,
) -> None:
    started = {"id": OUTCOME["id"], "authorization_url": "https://accounts.example/auth?state=s",
               "state": "s", "expires_at": "2026-11-21T06:40:00Z"}  # fmt: skip
    route = broker_api.post(f"{ALICE}/authorizations").mock(side_effect=[
        httpx.Response(201, json=started),
        problem("database_unavailable", 503, retry_after=1),
    ])  # fmt: skip
    async with BrokerClient(BROKER, "tbk_test", retry=FAST) as broker:
        upgrade = await broker.add_scopes(
            "alice@example.com", [LABELS], return_to="https://app.example/connected"
        )
        assert (upgrade.id, upgrade.authorization_url) == (
            started["id"],
            started["authorization_url"],
        )
        # Each call starts a flow of its own: a failure is not repeated blindly.
        with pytest.raises(BrokerProblem):
            await broker.add_scopes("alice@example.com", [LABELS])
        with pytest.raises(ValueError, match="at least one scope"):
            await broker.add_scopes("alice@example.com", [])
        with pytest.raises(TypeError, match="list of strings"):
            await broker.add_scopes("alice@example.com", LABELS)
        with pytest.raises(TypeError, match="list of strings"):
            await broker.start_authorization(scopes="email")
    assert route.call_count == 2
    assert [json.loads(call.request.content) for call in route.calls] == [
        {"scopes": [LABELS], "return_to": "https://app.example/connected"},
        {"scopes": [LABELS]},
    ]


def test_broker_credentials_ask_for_their_scopes_and_keep_them_through_client_libraries(
    broker_api: respx.MockRouter,
) -> None:
    link = "http://broker.test/v1/oauth/reauthorize?link=abc"
    route = broker_api.get(f"{ALICE}/access-token").mock(side_effect=[
        token("ya29.granted", GRANTED),
        problem("scope_not_granted", 403, missing_scopes=[LABELS], authorization_url=link),
    ])  # fmt: skip
    with SyncBrokerClient(BROKER, "tbk_test") as broker:
        plain = BrokerCredentials(broker, "alice@example.com", scopes=["email", READONLY])
        # googleapiclient's build asks every scope of the API: not required, so kept as given.
        assert with_scopes_if_required(plain, ["https://mail.google.com/"]) is plain
        assert plain.has_scopes([SCOPE + "userinfo.email"])
        plain.refresh(None)
        assert register_secret(plain.token) == "ya29.granted"
        labels = plain.with_scopes([LABELS])
        assert (labels.account, labels.scopes) == ("alice@example.com", [LABELS])
        with pytest.raises(ScopeNotGranted) as refused:
            labels.refresh(None)
        assert isinstance(refused.value, RefreshError)
        assert refused.value.authorization_url == link
        assert refused.value.missing_scopes == [LABELS]
    assert [call.request.url.params.get_list("scope") for call in route.calls] == [
        ["email", READONLY], [LABELS]
    ]  # fmt: skip
