"""Problems as HTTP answers: every failure becomes RFC 9457 problem+json here, and only here.

The catalogue (`token_broker.errors`) says what can go wrong; this module renders
it, maps FastAPI's and Starlette's own errors and database outages onto it, and
documents each route's problems in OpenAPI.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy.exc as sa_exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from token_broker.errors import (
    BadRequest,
    BrokerError,
    DatabaseUnavailable,
    HeadersTooLarge,
    InternalError,
    KeyUnavailable,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    UriTooLong,
    ValidationFailed,
    problem_type,
)
from token_broker.store.sealing import DecryptionError
from token_broker.web.schemas import Problem

log = logging.getLogger("token_broker.errors")

PROBLEM_MEDIA_TYPE = "application/problem+json"


def problem_response(error: BrokerError) -> JSONResponse:
    return JSONResponse(
        error.problem(),
        status_code=error.status,
        headers=error.headers(),
        media_type=PROBLEM_MEDIA_TYPE,
    )


def as_broker_error(error: BaseException) -> BrokerError | None:
    """The documented problem an exception stands for, or None if it is a bug.

    A database that refuses connections, drops them, times out a lock or has no free
    connection in the pool is an outage to retry after, not an internal error; so is a
    stored secret this replica's keyring cannot open (`/readyz` says which key).
    """
    if isinstance(error, BrokerError):
        return error
    if isinstance(error, DecryptionError):
        log.warning("stored secret did not open: %s", error)
        return KeyUnavailable(error.key_id)
    if isinstance(
        error, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError | OSError
    ) or (
        isinstance(error, sa_exc.DBAPIError)
        and (error.connection_invalidated or _is_outage_sqlstate(error.orig))
    ):
        log.warning("database unavailable: %s", type(error).__name__)
        return DatabaseUnavailable(retry_after=2)
    return None


# SQLSTATEs that say the server cannot serve now rather than that the statement is wrong:
# connection exceptions (08), too many connections or out of resources (53), shutdown,
# restart or a cancelled statement (57: asyncpg raises these as plain driver errors),
# and a lock wait that ran out (55P03).
_OUTAGE_SQLSTATE_CLASSES = ("08", "53", "57")
_OUTAGE_SQLSTATES = ("55P03",)


def _is_outage_sqlstate(driver_error: BaseException | None) -> bool:
    sqlstate = getattr(driver_error, "sqlstate", None)
    if not isinstance(sqlstate, str):
        return False
    return sqlstate[:2] in _OUTAGE_SQLSTATE_CLASSES or sqlstate in _OUTAGE_SQLSTATES


def unexpected_error_response() -> JSONResponse:
    """The 500 problem for an exception no handler knew: no internals, only the request id."""
    return problem_response(InternalError())


def _validation_errors(error: RequestValidationError) -> list[dict[str, Any]]:
    # Only location and message: pydantic's `input` could echo a code or token back.
    return [
        {"loc": [str(part) for part in item.get("loc", ())], "msg": str(item.get("msg", ""))}
        for item in error.errors()
    ]


_HTTP_ERRORS: dict[int, type[BrokerError]] = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


async def _broker_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, BrokerError)
    return problem_response(error)


def _body_sent_as_other_than_json(request: Request, error: RequestValidationError) -> bool:
    """A JSON body refused because it came unlabelled or labelled as something else.

    FastAPI reads a body as JSON only when it says so; curl's `-d` alone sends a form.
    """
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        return False
    return any(tuple(item.get("loc", ()))[:1] == ("body",) for item in error.errors())


async def _request_validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    if _body_sent_as_other_than_json(request, error):
        return problem_response(UnsupportedMediaType())
    return problem_response(ValidationFailed(errors=_validation_errors(error)))


async def _http_exception(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    error_class = _HTTP_ERRORS.get(error.status_code)
    if error_class is not None:
        return problem_response(error_class())
    # Status codes without a dedicated class keep their status; Starlette's detail is
    # generic (the reason phrase) for everything the broker raises itself.
    body = BrokerError(str(error.detail)).problem()
    body.update(
        status=error.status_code,
        code="http_error",
        title="HTTP error",
        type=problem_type("http_error"),
    )
    return JSONResponse(body, status_code=error.status_code, media_type=PROBLEM_MEDIA_TYPE)


async def _infrastructure_error(_request: Request, error: Exception) -> JSONResponse:
    problem = as_broker_error(error)
    if problem is None:
        raise error
    return problem_response(problem)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(BrokerError, _broker_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(sa_exc.SQLAlchemyError, _infrastructure_error)
    app.add_exception_handler(OSError, _infrastructure_error)
    app.add_exception_handler(DecryptionError, _infrastructure_error)


def problem_responses(*errors: type[BrokerError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting each problem a route can answer with."""
    by_status: dict[int, list[type[BrokerError]]] = {}
    documented: tuple[type[BrokerError], ...] = (
        *errors, ValidationFailed, PayloadTooLarge, UriTooLong, HeadersTooLarge, InternalError
    )  # fmt: skip
    for error in documented:
        by_status.setdefault(error.status, []).append(error)
    return {
        status: {
            "description": "Problem: " + ", ".join(f"`{cls.code}`" for cls in classes),
            "model": Problem,
        }
        for status, classes in sorted(by_status.items())
    }


def retag_problem_media_types(openapi: dict[str, Any]) -> dict[str, Any]:
    """Document error responses under application/problem+json, the type they are sent as."""
    for path_item in openapi.get("paths", {}).values():
        for operation in path_item.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[:1] in ("4", "5") and "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
    return openapi
