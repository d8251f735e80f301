import logging

import pytest
from fastapi import Body

from tests.support.brokers import Broker
from token_broker.services.api_keys import Permission


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"urn:token-broker:problem:{code}"
    assert body["title"]
    assert body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_unknown_route_is_a_404_problem(broker: Broker) -> None:
    assert_problem(await broker.client.get("/nope"), 404, "not_found")


async def test_wrong_method_is_a_405_problem(broker: Broker) -> None:
    assert_problem(await broker.client.post("/healthz"), 405, "method_not_allowed")


async def test_validation_errors_never_echo_input(broker: Broker) -> None:
    secret_looking = "ya29.this-should-not-come-back"
    response = await broker.client.get(
        "/v1/accounts",
        params={"limit": secret_looking},
        headers=await broker.headers(Permission.ACCOUNTS_READ),
    )
    body = assert_problem(response, 422, "validation_failed")
    assert body["errors"][0]["loc"] == ["query", "limit"]
    assert secret_looking not in response.text


async def test_unexpected_exception_is_a_500_problem_without_internals(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    async def explode(payload: dict = Body(default={})) -> None:  # noqa: B008
        raise RuntimeError("internal detail: connection string postgres://u:pw@db")

    broker.app.add_api_route("/explode", explode, methods=["POST"])
    with caplog.at_level(logging.ERROR):
        response = await broker.client.post("/explode", json={}, headers={"X-Request-ID": "req-42"})
    body = assert_problem(response, 500, "internal_error")
    assert body["request_id"] == "req-42"
    assert "internal detail" not in response.text
    assert "Traceback" not in response.text
    logged = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert len(logged) == 1
    assert logged[0].request_id == "req-42"  # type: ignore[attr-defined]


async def test_request_id_is_taken_or_generated(broker: Broker) -> None:
    taken = await broker.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert taken.headers["x-request-id"] == "abc-123"
    generated = await broker.client.get("/healthz", headers={"X-Request-ID": "bad id\nx"})
    assert generated.headers["x-request-id"] != "bad id\nx"
    assert len(generated.headers["x-request-id"]) == 32


async def test_access_log_has_request_id_and_no_query_string(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="token_broker.http"):
        await broker.client.get("/healthz?code=4/secret-code", headers={"X-Request-ID": "r1"})
    lines = [r for r in caplog.records if r.name == "token_broker.http"]
    assert [r.getMessage() for r in lines] == ["GET /healthz 200"]
    assert lines[0].request_id == "r1"  # type: ignore[attr-defined]


async def test_openapi_documents_problem_responses(broker: Broker) -> None:
    spec = (await broker.client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    assert "Problem" in spec["components"]["schemas"]
    get_account = spec["paths"]["/v1/accounts/{account}"]["get"]["responses"]
    for status in ("401", "403", "404", "422", "500"):
        content = get_account[status]["content"]
        assert list(content) == ["application/problem+json"]
    assert "account_not_found" in get_account["404"]["description"]
    docs = await broker.client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


class _DriverError(Exception):
    """A database driver's error carrying a SQLSTATE, as asyncpg's errors do."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"driver error {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    "sqlstate",
    [
        "57P03",  # cannot connect now: the server is starting or shutting down
        "57P01",  # admin shutdown: the connection was terminated
        "53300",  # too many connections
        "08006",  # connection failure
        "55P03",  # lock not available: a lock wait ran out
    ],
)
def test_a_database_that_cannot_serve_now_is_database_unavailable(sqlstate: str) -> None:
    from sqlalchemy import exc as sa_exc

    from token_broker.errors import DatabaseUnavailable
    from token_broker.web.problems import as_broker_error

    error = sa_exc.DBAPIError("SELECT 1", None, _DriverError(sqlstate))
    assert isinstance(as_broker_error(error), DatabaseUnavailable)


def test_a_statement_the_database_rejects_is_still_a_bug() -> None:
    from sqlalchemy import exc as sa_exc

    from token_broker.web.problems import as_broker_error

    # 42P01: undefined table. Retrying will not help, so it is no outage.
    error = sa_exc.DBAPIError("SELECT 1", None, _DriverError("42P01"))
    assert as_broker_error(error) is None
