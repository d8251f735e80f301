"""Liveness and readiness for orchestration."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.crypto import SecretColumn
from service.deps import State
from service.errors import NotReady, problem_responses
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])

_PROBE = SecretColumn("readiness", "probe")


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
    checks: dict[str, str] = {}
    if state.drain.draining:
        checks["shutdown"] = "draining: this instance is shutting down"
    try:
        revision = await state.database.schema_revision()
        checks["database"] = "ok"
        if revision == state.head_revision:
            checks["schema"] = "ok"
        else:
            checks["schema"] = (
                f"at {revision or 'no revision'}, expected {state.head_revision}; "
                "run `token-broker migrate`"
            )
    except Exception as error:
        checks["database"] = f"unreachable ({type(error).__name__})"
        checks["schema"] = "unknown"
    try:
        sealed = state.keyring.seal("probe", column=_PROBE, row="probe")
        state.keyring.open(sealed, column=_PROBE, row="probe")
        checks["keyring"] = "ok"
    except Exception as error:
        checks["keyring"] = f"failed ({type(error).__name__})"
    if all(value == "ok" for value in checks.values()):
        return Readiness(status="ready", checks=checks)
    failed = ", ".join(name for name, value in checks.items() if value != "ok")
    return NotReady(f"failed: {failed}", checks=checks).response()
