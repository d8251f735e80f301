from tests.support.brokers import start_broker
from token_broker.store.migrations import head_revision, migrate


async def test_healthz(broker) -> None:
    response = await broker.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]


async def test_readyz_when_migrated(broker) -> None:
    response = await broker.client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {
            "database": "ok",
            "schema": "ok",
            "secrets": "ok",
            "keyring": "ok",
            "gmail_quota": "ok",
        },
    }


async def test_readyz_503_before_migrating_and_200_after(
    settings_factory, empty_database_url: str
) -> None:
    settings = settings_factory(database_url=empty_database_url)
    _, lifespan, client = await start_broker(settings)
    try:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["code"] == "not_ready"
        assert body["checks"]["database"] == "ok"
        assert body["checks"]["schema"].startswith("at no revision, expected " + head_revision())
        assert "schema" in body["detail"]
        await migrate(empty_database_url, wait_seconds=5)
        assert (await client.get("/readyz")).status_code == 200
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_readyz_503_when_database_unreachable(settings_factory) -> None:
    settings = settings_factory(
        database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none", db_pool_timeout_seconds=1
    )
    _, lifespan, client = await start_broker(settings)
    try:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["database"].startswith("unreachable")
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)
