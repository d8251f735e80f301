"""Schema fuzzing: schemathesis against the broker's own OpenAPI document.

A broker process on 127.0.0.1, on the sandbox provider, with one connected account
(`alice@example.com`, the example in the schema). Every operation
is called with generated input, with a valid API key and without one. The checks:
no 5xx other than the documented 503s, and every status, content type, header and
body as documented, problem responses included.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    positive_data_acceptance,
)

from google_sandbox.browser import consent
from tests.support.brokers import TEST_CLIENT_ID, TEST_CLIENT_SECRET, TEST_KEYS, TEST_REDIRECT_URI
from tests.support.hygiene import register_secret
from tests.support.processes import BrokerProcess, SandboxProcess
from token_broker.services.api_keys import Permission
from token_broker.services.clients import ClientService
from token_broker.store.database import Database, create_engine
from token_broker.store.migrations import migrate

EXAMPLES = int(os.environ.get("TOKEN_BROKER_FUZZ_EXAMPLES", "30"))


@schemathesis.serializer("application/secevent+jwt")
def _security_event_token(_ctx: Any, value: Any) -> bytes:
    # POST /v1/risc takes a security event token (a JWT, a string) as its body.
    return value.encode() if isinstance(value, str) else str(value).encode()


async def _connect_alice(broker_url: str, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=30) as http:
        started = await http.post(
            f"{broker_url}/v1/authorizations", json={"login_hint": "alice@example.com"},
            headers=headers,
        )  # fmt: skip
        answer = await consent(http, started.json()["authorization_url"])
        register_secret(answer["code"])
        callback = await http.get(
            f"{broker_url}/v1/oauth/callback",
            params={"code": answer["code"], "state": answer["state"]},
        )
        assert callback.status_code == 200, callback.text


async def _start(url: str) -> tuple[SandboxProcess, BrokerProcess, str]:
    await migrate(url, wait_seconds=5)
    database = Database(create_engine(url))
    _, key = await ClientService(database).create("fuzzer", [p.value for p in Permission])
    await database.dispose()
    sandbox = SandboxProcess(
        client_id=TEST_CLIENT_ID, client_secret=TEST_CLIENT_SECRET, redirect_uri=TEST_REDIRECT_URI
    )
    await sandbox.ready()
    env = {
        "TOKEN_BROKER_DATABASE_URL": url,
        "TOKEN_BROKER_ENCRYPTION_KEYS": TEST_KEYS,
        "TOKEN_BROKER_GOOGLE_CLIENT_ID": TEST_CLIENT_ID,
        "TOKEN_BROKER_GOOGLE_CLIENT_SECRET": TEST_CLIENT_SECRET,
        "TOKEN_BROKER_REDIRECT_URI": TEST_REDIRECT_URI,
        "TOKEN_BROKER_RETURN_TO_ALLOWLIST": "https://app.example/connected",
        "TOKEN_BROKER_RATE_LIMIT_PER_SECOND": "0",
        **sandbox.settings(),
    }
    broker = BrokerProcess(env, name="fuzz")
    await broker.ready()
    await _connect_alice(broker.url, key)
    return sandbox, broker, key


@pytest.fixture(scope="module")
def fuzz_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A broker process on the sandbox provider (also a process: the fuzzing below is
    synchronous), with `alice@example.com`, the schema's example, connected."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('fuzz') / 'broker.db'}"
    sandbox, broker, key = asyncio.run(_start(url))
    register_secret(key)
    try:
        yield broker.url, key
    finally:
        broker.close()
        sandbox.close()


@pytest.fixture(scope="module")
def api_schema(fuzz_broker: tuple[str, str]) -> Any:
    url, _ = fuzz_broker
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


def operations(api_schema: Any) -> list[Any]:
    return [result.ok() for result in api_schema.get_all_operations()]


def fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> bool:
    """Fuzz one operation; False when it has no input that could be made invalid."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Any) -> None:
        # Two heuristics are left out. "Valid data is accepted": business rules refuse
        # some schema-valid input on purpose (a return_to off the allow-list, a code
        # the provider does not know). "Invalid data is rejected": a repeated scalar
        # query parameter is read as its last value, as FastAPI does. Every other
        # check runs: no server error, statuses, content types, headers, bodies.
        case.call_and_validate(
            headers=headers,
            timeout=30,
            excluded_checks=[positive_data_acceptance, negative_data_rejection],
        )

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        return False  # e.g. GET /healthz: no parameter, no body
    return True


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("with_key", [True, False], ids=["with-key", "without-key"])
def test_every_operation_answers_as_documented(
    api_schema: Any, fuzz_broker: tuple[str, str], mode: GenerationMode, with_key: bool
) -> None:
    _, key = fuzz_broker
    headers = {"Authorization": f"Bearer {key}"} if with_key else {}
    fuzzed = [fuzz(operation, mode, headers) for operation in operations(api_schema)]
    assert len(fuzzed) >= 11  # every operation of the API, not a silently empty schema
    assert sum(fuzzed) >= 7  # the ones with parameters or bodies, in negative mode too
