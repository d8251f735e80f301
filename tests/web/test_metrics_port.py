"""`TOKEN_BROKER_METRICS_PORT`: /metrics on its own port, and no longer on the API's."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.processes import free_port


async def test_metrics_move_to_their_own_port(broker_factory: Any, settings_factory: Any) -> None:
    port = free_port()
    broker = await broker_factory(settings_factory(metrics_port=port, metrics_host="127.0.0.1"))
    assert (await broker.client.get("/healthz")).status_code == 200
    on_api_port = await broker.client.get("/metrics")
    assert on_api_port.status_code == 404
    assert "/metrics" not in (await broker.client.get("/openapi.json")).json()["paths"]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as monitoring:
        scraped = await monitoring.get("/metrics")
        assert scraped.status_code == 200
        assert "token_broker_http_requests_total" in scraped.text
        assert 'token_broker_accounts{status="active"}' in scraped.text
        # Only the metrics: nothing of the API answers on this port.
        assert (await monitoring.get("/healthz")).status_code == 404
        assert (await monitoring.get("/v1/accounts")).status_code == 404


async def test_metrics_stay_on_the_api_port_by_default(broker: Any) -> None:
    assert (await broker.client.get("/metrics")).status_code == 200
