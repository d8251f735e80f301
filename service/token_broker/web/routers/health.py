"""Liveness and readiness for orchestration."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from token_broker.errors import NotReady
from token_broker.services.readiness import failing
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
    description="`checks` names each check: `ok`, what failed (503), or `degraded: ...` "
    "(still ready; e.g. Redis unreachable, Gmail quota kept locally at a fraction of the rate).",
    responses=problem_responses(NotReady),
)
async def readyz(state: State) -> Readiness | JSONResponse:
    checks = await state.readiness.checks()
    failed = failing(checks)
    if not failed:
        return Readiness(status="ready", checks=checks)
    return problem_response(NotReady(f"failed: {', '.join(failed)}", checks=checks))
