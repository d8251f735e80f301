"""Every reason, event, problem and setting of grant health is documented: in the README and,
for what the API can answer, in OpenAPI."""

from __future__ import annotations

import typing
from pathlib import Path

from tests.support.brokers import Broker
from token_broker.errors import AccountSuspended, InvalidSecurityEvent, ScopeNotGranted
from token_broker.services.grant_health import StatusReason
from token_broker.services.webhooks import EventType
from token_broker.settings import Settings, env_name

README = (Path(__file__).parents[2] / "README.md").read_text()


async def test_reasons_events_problems_and_settings_are_documented(broker: Broker) -> None:
    openapi = (await broker.client.get("/openapi.json")).json()
    text = str(openapi)
    for problem in (AccountSuspended, InvalidSecurityEvent, ScopeNotGranted):
        assert f"`{problem.code}`" in text, problem.code
        assert f"`{problem.code}` | {problem.status} |" in README, problem.code
    reasons = openapi["components"]["schemas"]["StatusReason"]["enum"]
    assert set(reasons) == {reason.value for reason in StatusReason}
    for reason in StatusReason:
        assert f"`{reason.value}`" in README, reason
    for event in typing.get_args(EventType):
        assert f"`{event}`" in README, event
    for field in (
        "google_publishing_status", "expiring_notice_seconds", "grant_health_interval_seconds",
        "risc_configuration_url", "risc_audiences", "risc_max_age_seconds",
        "risc_service_account_file", "risc_api_base", "risc_receiver_url",
    ):  # fmt: skip
        assert field in Settings.model_fields
        assert f"`{env_name(field)}`" in README, field
    paths = openapi["paths"]
    assert "202" in paths["/v1/risc"]["post"]["responses"]
    assert "201" in paths["/v1/accounts/{account}/authorizations"]["post"]["responses"]
    listing = {p["name"] for p in paths["/v1/accounts"]["get"]["parameters"]}
    assert {"status", "reason"} <= listing
