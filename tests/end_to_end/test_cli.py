"""The CLI as an operator runs it: `python -m token_broker ...` in a subprocess."""

import subprocess
import sys
from pathlib import Path

from tests.support.brokers import start_broker
from tests.support.hygiene import register_secret
from tests.support.processes import cli
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


def test_clients_create_refuses_unknown_permissions(cli_env, tmp_path: Path) -> None:
    result = cli(
        "clients", "create", "x", "--permission", "tokens:write", env=cli_env, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "tokens:write" in result.stderr


def test_check_reports_one_line_per_check(cli_env, tmp_path: Path) -> None:
    result = cli("check", env=cli_env, cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        "ok   configuration",
        "ok   keyring (1 keys, primary test1)",
        "ok   database",
        "ok   schema",
    ]
    # Nothing listens where cli_env points the provider (the reachable case is in
    # test_operations, against the sandbox).
    assert lines[4] == "FAIL provider: unreachable (token: ConnectError)"
    assert result.returncode == 1


def test_check_names_what_is_wrong(tmp_path: Path) -> None:
    result = cli(
        "check",
        env={"TOKEN_BROKER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/new.db"},
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "FAIL configuration: TOKEN_BROKER_ENCRYPTION_KEYS" in result.stdout
    assert "FAIL schema: at nothing" in result.stdout


def test_serve_refuses_incomplete_configuration(tmp_path: Path) -> None:
    result = cli("serve", env={"TOKEN_BROKER_TOKEN_URI": "nope"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "TOKEN_BROKER_TOKEN_URI: expected an absolute http(s) URL" in result.stderr


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
