"""The CLI as an operator runs it: `python -m token_broker ...` in a subprocess."""

import re
import subprocess
import sys
from pathlib import Path

from tests.support.brokers import start_broker
from tests.support.hygiene import register_secret
from tests.support.processes import cli
from token_broker.store.migrations import head_revision
from token_broker.store.sealing import Keyring


def test_keys_generate_prints_a_usable_entry(tmp_path: Path) -> None:
    result = cli("keys", "generate", "--kid", "k2027", env={}, cwd=tmp_path)
    assert result.returncode == 0
    entry = register_secret(result.stdout.strip())
    assert entry.startswith("k2027:")
    assert Keyring.parse(entry).primary_kid == "k2027"


async def test_clients_create_list_revoke_round_trip(
    cli_env: dict[str, str], settings_factory, tmp_path: Path
) -> None:
    created = cli(
        "clients",
        "create",
        "crm-sync",
        "--permission",
        "tokens:read",
        "--permission",
        "accounts:read",
        env=cli_env,
        cwd=tmp_path,
    )
    assert created.returncode == 0, created.stderr
    key = register_secret(created.stdout.strip())
    assert key.startswith("tbk_")
    assert "shown only now" in created.stderr

    listed = cli("clients", "list", env=cli_env, cwd=tmp_path)
    assert "crm-sync" in listed.stdout
    assert "accounts:read tokens:read" in listed.stdout
    assert key not in listed.stdout

    _, lifespan, client = await start_broker(settings_factory(api_key_cache_seconds=0))
    try:
        headers = {"Authorization": f"Bearer {key}"}
        assert (await client.get("/v1/accounts", headers=headers)).status_code == 200
        revoked = cli("clients", "revoke", "crm-sync", env=cli_env, cwd=tmp_path)
        assert revoked.returncode == 0
        assert (await client.get("/v1/accounts", headers=headers)).status_code == 401
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)

    assert cli("clients", "revoke", "nobody", env=cli_env, cwd=tmp_path).returncode == 1
    taken = cli("clients", "create", "crm-sync", "-p", "tokens:read", env=cli_env, cwd=tmp_path)
    assert taken.returncode == 1
    assert "clients delete crm-sync" in taken.stderr
    listed = cli("clients", "list", env=cli_env, cwd=tmp_path)
    assert "revoked 20" in listed.stdout

    deleted = cli("clients", "delete", "crm-sync", env=cli_env, cwd=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    assert "its audit history remains" in deleted.stdout
    again = cli("clients", "create", "crm-sync", "-p", "tokens:read", env=cli_env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    register_secret(again.stdout.strip())

    rotated = cli("clients", "rotate", "crm-sync", "--overlap", "600", env=cli_env, cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    new_key = register_secret(rotated.stdout.strip())
    assert new_key.startswith("tbk_")
    assert "the previous key works until 20" in rotated.stderr
    listed = cli("clients", "list", env=cli_env, cwd=tmp_path)
    assert "active; the replaced key works until 20" in listed.stdout
    assert re.search(r"until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", listed.stdout)


def test_clients_create_refuses_unknown_permissions(cli_env, tmp_path: Path) -> None:
    result = cli(
        "clients", "create", "x", "--permission", "tokens:write", env=cli_env, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "tokens:write" in result.stderr


def test_check_reports_one_line_per_check(cli_env, database_url: str, tmp_path: Path) -> None:
    result = cli("check", env=cli_env, cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert lines[:2] == ["ok   configuration", "ok   keyring (1 keys, primary test1)"]
    assert lines[2].startswith("ok   database ")
    assert "(the default" not in lines[2]
    assert lines[3] == f"ok   schema (at {head_revision()})"
    assert lines[4] == "ok   secrets (0 sampled values open)"
    assert lines[5] == "ok   replicas (none live)"
    # Nothing listens where cli_env points the provider: each upstream names its URL (the
    # reachable case is in test_operations, against the sandbox).
    assert lines[6:] == [
        "FAIL provider token endpoint: http://127.0.0.1:9/token_uri unreachable (ConnectError)",
        "FAIL provider signing keys: http://127.0.0.1:9/jwks_uri unreachable (ConnectError)",
        "FAIL Gmail: http://127.0.0.1:9/gmail/v1/users/me/messages unreachable (ConnectError)",
    ]
    assert result.returncode == 1


def test_check_and_migrate_say_which_database_and_check_creates_none(tmp_path: Path) -> None:
    result = cli("check", env={}, cwd=tmp_path)
    assert result.returncode == 1
    default = f"sqlite+aiosqlite:///{tmp_path.resolve()}/token-broker.db"
    assert (
        f"FAIL database: no database at {default} (the default: TOKEN_BROKER_DATABASE_URL is "
        "not set); create it with `token-broker migrate`"
    ) in result.stdout
    assert "FAIL configuration: TOKEN_BROKER_ENCRYPTION_KEYS" in result.stdout
    assert not (tmp_path / "token-broker.db").exists()

    migrated = cli("migrate", env={}, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.splitlines() == [
        f"creating database {default} (the default: TOKEN_BROKER_DATABASE_URL is not set)",
        f"database at revision {head_revision()} (head)",
    ]
    again = cli("check", env={}, cwd=tmp_path)
    assert f"ok   database {default} (the default" in again.stdout


def test_check_names_what_is_wrong(tmp_path: Path) -> None:
    result = cli(
        "check",
        env={"TOKEN_BROKER_DATABASE_URL": "postgresql+asyncpg://broker:pw-123@127.0.0.1:1/x"},
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "FAIL configuration: TOKEN_BROKER_ENCRYPTION_KEYS" in result.stdout
    assert (
        "FAIL database: postgresql+asyncpg://broker:***@127.0.0.1:1/x is unreachable"
        in result.stdout
    )
    assert "pw-123" not in result.stdout + result.stderr


def test_commands_on_a_database_without_schema_say_to_migrate(
    cli_env, empty_database_url: str, tmp_path: Path
) -> None:
    env = {**cli_env, "TOKEN_BROKER_DATABASE_URL": empty_database_url}
    result = cli("clients", "list", env=env, cwd=tmp_path)
    assert result.returncode == 1
    # SQLite: no file yet (and none created); Postgres: a database without tables.
    assert "is at revision nothing" in result.stderr or "no database at" in result.stderr
    assert "token-broker migrate`" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_incomplete_configuration(tmp_path: Path) -> None:
    result = cli("serve", env={"TOKEN_BROKER_TOKEN_URI": "nope"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "TOKEN_BROKER_TOKEN_URI: expected an absolute http(s) URL" in result.stderr


def test_a_malformed_encryption_key_is_one_line(cli_env, tmp_path: Path) -> None:
    short = register_secret("k1:" + "QUJD" * 10)  # 30 bytes, not 32
    result = cli("serve", env={**cli_env, "TOKEN_BROKER_ENCRYPTION_KEYS": short}, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "configuration error:",
        "  TOKEN_BROKER_ENCRYPTION_KEYS: key 'k1' is 30 bytes; expected 32 (AES-256)",
    ]


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_import_packages_are_token_broker_and_google_sandbox() -> None:
    # From the checkout's root, where `service/` is a folder on the path: still no package.
    root = Path(__file__).parents[2]
    assert _python("import service", root).returncode != 0
    assert _python("import token_broker, google_sandbox", root).returncode == 0


def test_the_cli_for_serve_does_not_load_the_sandbox(tmp_path: Path) -> None:
    loaded = _python(
        "import sys, token_broker.cli, token_broker.app; "
        "print(sorted(m for m in sys.modules if m.startswith('google_sandbox')))",
        tmp_path,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"


def test_sandbox_command_documents_its_options(tmp_path: Path) -> None:
    result = cli("sandbox", "--help", env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--port", "--client-id", "--client-secret", "--redirect-uri", "--host"):
        assert option in result.stdout
