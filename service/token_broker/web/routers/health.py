"""Liveness and readiness for orchestration."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from token_broker.errors import NotReady
from token_broker.web.dependencies import State
from token_broker.web.problems import problem_response, problem_responses
from token_broker.web.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process serves")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: database answers, schema at head, keyring loads",
    responses=problem_responses(NotReady),
)
async def readyz(state: State) -> Readiness | JSONResponse:
    checks = await state.readiness.checks()
    if all(value == "ok" for value in checks.values()):
        return Readiness(status="ready", checks=checks)
    failed = ", ".join(name for name, value in checks.items() if value != "ok")
    return problem_response(NotReady(f"failed: {failed}", checks=checks))
