"""Prometheus metrics for operators."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import Response

from token_broker.observability.metrics import CONTENT_TYPE
from token_broker.web.dependencies import State

log = logging.getLogger("token_broker.metrics")
router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
async def metrics(state: State) -> Response:
    try:
        counts = await state.accounts.count_by_status()
        for status in ("active", "revoked", "suspended"):
            state.metrics.accounts.labels(status).set(counts.get(status, 0))
    except Exception as error:
        # Metrics must answer while the database is down; the gauge keeps its last value.
        log.debug("account counts unavailable for metrics (%s)", type(error).__name__)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
