"""Test harness: both databases, a migrated schema per run, an isolated database per test.

Every test that takes `backend` runs on SQLite and on Postgres. Postgres is the
server at TOKEN_BROKER_TEST_POSTGRES_URL (default: 127.0.0.1:5432 as postgres);
each run creates its own database, migrates it once, and drops it at the end.
Tests through the app commit for real and the tables are emptied afterwards;
repository tests run in a transaction that is rolled back (`db_session`).
When Postgres cannot be reached its tests are skipped, unless
TOKEN_BROKER_TEST_REQUIRE_POSTGRES=1 (CI), which turns that into a failure.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

import service.models  # noqa: F401
from service.app import create_app
from service.auth import ClientService, Permission
from service.crypto import Keyring
from service.db import Database, create_engine, upgrade_to_head
from service.settings import Settings

ADMIN_URL = os.environ.get(
    "TOKEN_BROKER_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = os.environ.get("TOKEN_BROKER_TEST_REQUIRE_POSTGRES") == "1"
ARTIFACTS = Path(__file__).parent / ".artifacts"
RUN_LOG = ARTIFACTS / "test-run.log"

# Upstream endpoints in unit tests: loopback on a port nothing listens on, so a request
# that respx does not intercept fails locally instead of leaving the machine.
UPSTREAM = "http://127.0.0.1:9"
TEST_CLIENT_ID = "test-client.apps.googleusercontent.com"
TEST_CLIENT_SECRET = "GOCSPX-test-client-secret-0123456789"
TEST_REDIRECT_URI = "https://broker.example/v1/oauth/callback"
TEST_KEYS = Keyring.generate_entry("test1")

# Every secret a test hands the broker is registered here; the run's log must not
# contain any of them (checked when the session ends).
KNOWN_SECRETS: set[str] = {TEST_CLIENT_SECRET, TEST_KEYS.split(":", 1)[1]}
SECRET_SHAPES = re.compile(r"ya29\.[\w.-]{8,}|1//[\w.-]{8,}|tbk_[A-Za-z0-9_-]{43}")


def register_secret(value: str) -> str:
    KNOWN_SECRETS.add(value)
    return value


# --------------------------------------------------------------------------- logging


_LOOPBACK = {"127.0.0.1", "localhost", "::1", "broker.test", None}


def _loopback_only(getaddrinfo: Any) -> Any:
    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in _LOOPBACK and not str(name).startswith("127."):
            raise OSError(f"test tried to reach {name!r}; tests talk only to 127.0.0.1")
        return getaddrinfo(host, *args, **kwargs)

    return guarded


def pytest_configure(config: pytest.Config) -> None:
    # Tests talk only to loopback: a lookup of any other name fails the test at once.
    socket.getaddrinfo = _loopback_only(socket.getaddrinfo)
    # The suite configures the broker explicitly; a developer's own settings must not leak in.
    for name in list(os.environ):
        if name.startswith("TOKEN_BROKER_") and not name.startswith("TOKEN_BROKER_TEST_"):
            del os.environ[name]
    ARTIFACTS.mkdir(exist_ok=True)
    for old in ARTIFACTS.glob("*.log"):
        old.unlink()
    handler = logging.FileHandler(RUN_LOG, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for noisy in ("aiosqlite", "asyncio", "httpx", "httpcore", "hpack", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = "".join(
        path.read_text(encoding="utf-8", errors="replace") for path in ARTIFACTS.glob("*.log")
    )
    leaks = [secret[:6] + "…" for secret in KNOWN_SECRETS if secret and secret in text]
    leaks += [match.group(0)[:6] + "…" for match in SECRET_SHAPES.finditer(text)]
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"secret hygiene: {len(leaks)} secret(s) in {ARTIFACTS}/*.log: {leaks[:5]}"
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --------------------------------------------------------------------------- databases


async def _create_postgres_database() -> str | None:
    name = f"token_broker_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_async_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as error:
        if REQUIRE_POSTGRES:
            raise
        print(f"\nPostgres unreachable at {ADMIN_URL} ({type(error).__name__}): skipping it")
        return None
    finally:
        await admin.dispose()
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    engine = create_engine(url)
    async with engine.begin() as connection:
        await upgrade_to_head(connection)
    await engine.dispose()
    return url


async def _drop_postgres_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = create_async_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str | None]:
    url = await _create_postgres_database()
    yield url
    if url is not None:
        await _drop_postgres_database(url)


@pytest.fixture(scope="session")
async def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as connection:
        await upgrade_to_head(connection)
    await engine.dispose()
    return path


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def database_url(
    backend: str, postgres_url: str | None, sqlite_template: Path, tmp_path: Path
) -> AsyncIterator[str]:
    """A migrated, empty database for this test."""
    if backend == "sqlite":
        path = tmp_path / "broker.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    if postgres_url is None:
        pytest.skip("Postgres is not reachable")
    yield postgres_url
    await _truncate_all(postgres_url)


@pytest.fixture
async def empty_database_url(
    backend: str, postgres_url: str | None, tmp_path: Path
) -> AsyncIterator[str]:
    """A database with no schema at all, dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/empty.db"
        return
    if postgres_url is None:
        pytest.skip("Postgres is not reachable")
    name = f"tb_empty_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    await _drop_postgres_database(url)


async def _truncate_all(url: str) -> None:
    tables = ", ".join(f'"{table.name}"' for table in SQLModel.metadata.sorted_tables)
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY"))
    await engine.dispose()


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(create_engine(database_url))
    yield db
    await db.dispose()


@pytest.fixture
async def db_session(database: Database) -> AsyncIterator[AsyncSession]:
    """A session whose every commit is a savepoint inside a transaction rolled back at the end."""
    async with database.engine.connect() as connection:
        transaction = await connection.begin()
        session = AsyncSession(
            bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )
        try:
            yield session
        finally:
            await session.close()
            await transaction.rollback()


# --------------------------------------------------------------------------- the app


@pytest.fixture
def settings_factory(database_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "environment": "production",
            "database_url": database_url,
            "encryption_keys": SecretStr(TEST_KEYS),
            "google_client_id": TEST_CLIENT_ID,
            "google_client_secret": SecretStr(TEST_CLIENT_SECRET),
            "redirect_uri": TEST_REDIRECT_URI,
            "auth_uri": f"{UPSTREAM}/o/oauth2/v2/auth",
            "token_uri": f"{UPSTREAM}/token",
            "userinfo_uri": f"{UPSTREAM}/v1/userinfo",
            "revoke_uri": f"{UPSTREAM}/revoke",
            "jwks_uri": f"{UPSTREAM}/oauth2/v3/certs",
            "issuer": "https://accounts.google.com",
            "gmail_api_base": UPSTREAM,
            "return_to_allowlist": ("https://app.example/connected",),
            "api_key_cache_seconds": 5.0,
            "access_log": True,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory()


class Broker:
    """A running app, an HTTP client to it, and helpers to make API keys."""

    def __init__(self, app: Any, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def state(self) -> Any:
        return self.app.state.broker

    async def api_key(self, *permissions: Permission, name: str | None = None) -> str:
        granted = permissions or tuple(Permission)
        _, key = await ClientService(self.state.database).create(
            name or f"client-{uuid.uuid4().hex[:8]}", [p.value for p in granted]
        )
        return register_secret(key)

    async def headers(self, *permissions: Permission) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.api_key(*permissions)}"}


async def start_broker(settings: Settings) -> tuple[Any, Any, httpx.AsyncClient]:
    app = create_app(settings)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    )
    return app, lifespan, client


@pytest.fixture
async def broker_factory(database_url: str) -> AsyncIterator[Callable[[Settings], Any]]:
    # Depends on database_url so brokers stop (and flush their audit) before the tables
    # are emptied for the next test.
    running: list[tuple[Any, httpx.AsyncClient]] = []

    async def make(settings: Settings) -> Broker:
        app, lifespan, client = await start_broker(settings)
        running.append((lifespan, client))
        return Broker(app, client)

    yield make
    for lifespan, client in reversed(running):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def broker(broker_factory: Callable[[Settings], Any], settings: Settings) -> Broker:
    result: Broker = await broker_factory(settings)
    return result


async def eventually(
    predicate: Callable[[], Any], *, within: float = 5.0, interval: float = 0.01
) -> Any:
    """Poll `predicate` until it returns something truthy, or fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- sandbox


@pytest.fixture
async def provider() -> AsyncIterator[Any]:
    """The sandbox provider as a real server on 127.0.0.1, with the test client registered."""
    from service.sandbox import SandboxState, create_sandbox_app
    from tests.servers import serve

    state = SandboxState(default_mailbox_size=300)
    state.add_client(TEST_CLIENT_ID, TEST_CLIENT_SECRET, [TEST_REDIRECT_URI])
    async with serve(create_sandbox_app(state)) as url:
        state.issuer = url
        yield Provider(state, url)


class Provider:
    def __init__(self, state: Any, url: str) -> None:
        self.state = state
        self.url = url

    def settings(self) -> dict[str, Any]:
        return {
            "auth_uri": f"{self.url}/o/oauth2/v2/auth",
            "token_uri": f"{self.url}/token",
            "userinfo_uri": f"{self.url}/v1/userinfo",
            "revoke_uri": f"{self.url}/revoke",
            "jwks_uri": f"{self.url}/oauth2/v3/certs",
            "issuer": self.url,
            "gmail_api_base": self.url,
        }


@pytest.fixture
def live_settings() -> dict[str, Any]:
    """Extra settings for the `live` broker; test modules override this fixture."""
    return {}


@pytest.fixture
async def live(
    provider: Provider,
    broker_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
    live_settings: dict[str, Any],
) -> Any:
    """A broker wired to the running sandbox provider."""
    from tests.flow import Live

    broker = await broker_factory(settings_factory(**provider.settings(), **live_settings))
    async with httpx.AsyncClient() as browser:
        yield Live(provider, broker, browser)


@pytest.fixture
async def connected(broker: Broker, upstream: Any) -> Broker:
    """`broker` with one account connected through a respx-faked Google (exchange)."""
    from service.auth import Permission
    from tests.google_fakes import token_body

    upstream.post("/token").respond(json=token_body())
    response = await broker.client.post(
        "/v1/oauth/exchange",
        json={"code": "4/0Aconnected"},
        headers=await broker.headers(Permission.ACCOUNTS_WRITE),
    )
    assert response.status_code == 200, response.text
    return broker


@pytest.fixture
async def upstream() -> AsyncIterator[Any]:
    """Google's endpoints faked with respx (JWKS preset); tests add the routes they need."""
    import respx

    from tests.google_fakes import SIGNING_KEY

    with respx.mock(base_url=UPSTREAM, assert_all_called=False, assert_all_mocked=True) as mock:
        mock.get("/oauth2/v3/certs").respond(json={"keys": [SIGNING_KEY.as_dict(private=False)]})
        yield mock


@pytest.fixture
def cli_env(database_url: str) -> dict[str, str]:
    return {
        "TOKEN_BROKER_DATABASE_URL": database_url,
        "TOKEN_BROKER_ENCRYPTION_KEYS": TEST_KEYS,
        "TOKEN_BROKER_GOOGLE_CLIENT_ID": TEST_CLIENT_ID,
        "TOKEN_BROKER_GOOGLE_CLIENT_SECRET": "GOCSPX-test-client-secret-0123456789",
        "TOKEN_BROKER_REDIRECT_URI": "https://broker.example/v1/oauth/callback",
        # Provider endpoints on loopback where nothing listens: nothing leaves the machine.
        "TOKEN_BROKER_ISSUER": UPSTREAM,
        **{
            f"TOKEN_BROKER_{name}": f"{UPSTREAM}/{name.lower()}"
            for name in ("AUTH_URI", "TOKEN_URI", "USERINFO_URI", "REVOKE_URI", "JWKS_URI")
        },
        "TOKEN_BROKER_GMAIL_API_BASE": UPSTREAM,
    }
