"""Prometheus metrics for operators. A scrape renders; it never queries the database
(database-backed gauges are refreshed on a timer: `services/account_gauges.py`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from token_broker.observability.metrics import CONTENT_TYPE
from token_broker.web.dependencies import State

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
