"""`token-broker dev`: the broker and the sandbox provider in one process, on a fresh machine.

Everything lives in a data folder: the SQLite database, a generated keyring and the
sandbox's clients, users and grants (saved whenever they change, so connected
accounts keep working across restarts). A fresh API key with every permission is
printed at start. The sandbox's Cross-Account Protection stream delivers to the
broker's `/v1/risc` from the start (revoking a grant in the sandbox reaches the broker
at once), and a service account key for `token-broker risc` is written beside them.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import uvicorn

from token_broker.app import create_app, tracing_from_environment
from token_broker.kit.clock import utcnow
from token_broker.services.api_keys import Permission
from token_broker.services.clients import ClientService
from token_broker.settings import ENV_PREFIX, Settings, load_settings
from token_broker.store.database import Database, create_engine, is_postgres
from token_broker.store.migrations import migrate
from token_broker.store.sealing import Keyring
from token_broker.web.serving import guarded_options

if TYPE_CHECKING:
    from fastapi import FastAPI

    from google_sandbox import SandboxState

DEV_CLIENT_ID = "sandbox-client.apps.googleusercontent.com"
DEV_KEY_PREFIX = "dev-"
SEED_USERS = (
    ("alice@example.com", "Alice Example", 1_200),
    ("bob@example.com", "Bob Example", 25_000),
    ("carol@example.com", "Carol Example", 0),
)


def production_signals(environ: dict[str, str]) -> list[str]:
    """Settings that say this is not a developer's machine."""
    signals = []
    database_url = environ.get(f"{ENV_PREFIX}DATABASE_URL", "")
    if database_url and is_postgres(database_url):
        signals.append(f"{ENV_PREFIX}DATABASE_URL points at Postgres")
    for name in ("GOOGLE_CLIENT_ID", "GOOGLE_CLIENT_SECRETS_FILE"):
        if environ.get(ENV_PREFIX + name):
            signals.append(f"{ENV_PREFIX}{name} names a real Google client")
    return signals


class PortInUse(Exception):
    """Something already listens on the dev server's address."""


class DataDirInUse(Exception):
    """Another dev instance holds the data directory; the message says which."""


def listen(host: str, port: int) -> socket.socket:
    """Take the address before anything else happens, so a busy port changes nothing.

    Listening (not only binding) is what keeps a second process off the port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(2048)
    except OSError as error:
        listener.close()
        raise PortInUse(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    listener.set_inheritable(True)
    return listener


def lock_data_dir(data_dir: Path, url: str) -> IO[str]:
    """Hold the data directory for this process (released when it exits, however it exits).

    Two instances on one folder would share one SQLite file and the sandbox's state,
    and each start replaces the dev API key: the second would lock the first out.
    """
    import fcntl

    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / "dev.lock").open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: say by whom (the holder wrote it below)
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise DataDirInUse(
            f"{data_dir} is in use by a running token-broker dev ({holder})"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}, serving {url}\n")
    handle.flush()
    return handle


class _AnnouncingServer(uvicorn.Server):
    """uvicorn that says so once it serves (never when the start failed)."""

    def __init__(self, config: uvicorn.Config, on_serving: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_serving = on_serving

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.on_serving()


def serve(
    app: FastAPI, settings: Settings, listener: socket.socket, on_serving: Callable[[], None]
) -> None:
    """Serve on the already bound `listener`, connections bounded as in production."""
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=5,
        **guarded_options(settings),
    )
    _AnnouncingServer(config, on_serving).run(sockets=[listener])


@dataclass
class DevEnvironment:
    settings: Settings
    sandbox: SandboxState
    data_dir: Path
    api_key: str
    base_url: str

    def save_sandbox(self) -> None:
        path = self.data_dir / "sandbox.json"
        path.write_text(json.dumps(self.sandbox.snapshot(), indent=1))
        path.chmod(0o600)


def _private_file(path: Path, make: str) -> str:
    if not path.exists():
        path.write_text(make)
        path.chmod(0o600)
    return path.read_text().strip()


def prepare(data_dir: Path, host: str, port: int, *, keep_database_url: bool) -> DevEnvironment:
    # The fake Google is imported here, never by the modules a production process loads.
    from google_sandbox import SandboxState, new_service_account, register_receiver

    data_dir.mkdir(parents=True, exist_ok=True)
    base_url = f"http://{host}:{port}"
    sandbox_url = f"{base_url}/sandbox"
    keyring = _private_file(data_dir / "keyring", Keyring.generate_entry("dev1"))
    sandbox = SandboxState(issuer=sandbox_url)
    snapshot_path = data_dir / "sandbox.json"
    if snapshot_path.exists():
        sandbox.restore(json.loads(snapshot_path.read_text()))
    client = sandbox.clients.get(DEV_CLIENT_ID)
    if client is None:
        client = sandbox.add_client(DEV_CLIENT_ID, secrets.token_urlsafe(24), [])
    client.redirect_uris.add(f"{base_url}/v1/oauth/callback")
    for email, name, size in SEED_USERS:
        if email not in sandbox.users:
            sandbox.add_user(email, name=name, mailbox_size=size)
    register_receiver(sandbox, f"{base_url}/v1/risc")
    risc_key = data_dir / "risc-service-account.json"
    risc_key.touch(mode=0o600)
    risc_key.chmod(0o600)
    risc_key.write_text(json.dumps(new_service_account(sandbox), indent=1))

    overrides: dict[str, object] = {
        "environment": "development",
        "encryption_keys": keyring,
        "google_client_secrets_file": None,
        "google_client_id": DEV_CLIENT_ID,
        "google_client_secret": client.client_secret,
        "redirect_uri": f"{base_url}/v1/oauth/callback",
        "issuer": sandbox_url,
        "auth_uri": f"{sandbox_url}/o/oauth2/v2/auth",
        "token_uri": f"{sandbox_url}/token",
        "userinfo_uri": f"{sandbox_url}/v1/userinfo",
        "revoke_uri": f"{sandbox_url}/revoke",
        "jwks_uri": f"{sandbox_url}/oauth2/v3/certs",
        "gmail_api_base": sandbox_url,
        "risc_service_account_file": risc_key,
        "risc_api_base": sandbox_url,
    }
    if not keep_database_url:
        overrides["database_url"] = f"sqlite+aiosqlite:///{(data_dir / 'broker.db').resolve()}"
    settings = load_settings(**overrides)
    # The sandbox's app has the publishing status the broker is told it has.
    client.publishing_status = settings.google_publishing_status
    api_key = asyncio.run(_migrate_and_issue_key(settings))
    environment = DevEnvironment(settings, sandbox, data_dir, api_key, base_url)
    environment.save_sandbox()
    sandbox.on_change = environment.save_sandbox
    return environment


async def _migrate_and_issue_key(settings: Settings) -> str:
    await migrate(settings.database_url, wait_seconds=settings.migrate_wait_seconds)
    database = Database(create_engine(settings.database_url))
    try:
        clients = ClientService(database)
        for old in await clients.list():
            if old.name.startswith(DEV_KEY_PREFIX) and old.revoked_at is None:
                await clients.revoke(old.name)
        name = DEV_KEY_PREFIX + utcnow().strftime("%Y%m%dT%H%M%S") + secrets.token_hex(2)
        _, key = await clients.create(name, [permission.value for permission in Permission])
    finally:
        await database.dispose()
    return key


def dev_app(environment: DevEnvironment) -> FastAPI:
    from google_sandbox import create_sandbox_app

    return create_app(
        environment.settings,
        mounts={"/sandbox": create_sandbox_app(environment.sandbox)},
        tracing=tracing_from_environment(),
    )


def banner(environment: DevEnvironment) -> str:
    base = environment.base_url
    auth = '-H "Authorization: Bearer $TB_KEY"'
    users = ", ".join(f"{email} ({size:,} messages)" for email, _, size in SEED_USERS)
    return f"""
Token Broker dev mode: the broker and a sandbox Google, on {base}
  data      {environment.data_dir} (SQLite, keyring, sandbox grants)
  API docs  {base}/docs
  sandbox   {base}/sandbox, with {users}

A dev API key with every permission (it replaces the previous dev key of this folder):

  export TB_KEY={environment.api_key}

Next:
  1. Start connecting an account:
     curl -s -X POST {base}/v1/authorizations {auth} \\
          -H 'Content-Type: application/json' -d '{{"login_hint": "alice@example.com"}}'
  2. Open the authorization_url it returns in a browser and press Allow
     (the sandbox's consent page; you land on the broker's "Account connected" page).
  3. Fetch an access token, then list the account's messages:
     curl -s {base}/v1/accounts/alice@example.com/access-token {auth}
     curl -s '{base}/v1/accounts/alice@example.com/messages?q=is:unread' {auth}
"""
