"""Replica heartbeats: which broker processes serve, and which encryption keys each holds.

Every serving process writes its row when it starts and every `HEARTBEAT_SECONDS`
after, and deletes it when it stops. A row seen within `LIVE_WITHIN` belongs to a
live replica; rows of processes that died without stopping are forgotten after a
day. `keys rotate` reads them and refuses while a live replica lacks the new
primary key: that replica could not open what the rotation re-seals. `check`
lists them.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import datetime, timedelta
from importlib.metadata import version

from token_broker.kit.background import Background, every
from token_broker.kit.clock import utcnow
from token_broker.store.database import Database
from token_broker.store.models import Replica
from token_broker.store.repositories import ReplicaRepository
from token_broker.store.sealing import Keyring

log = logging.getLogger("token_broker.replicas")

HEARTBEAT_SECONDS = 10.0
LIVE_WITHIN = timedelta(seconds=3 * HEARTBEAT_SECONDS)
FORGET_AFTER = timedelta(days=1)


class Heartbeat:
    """This process's row in `replicas`, kept fresh while it serves."""

    def __init__(self, database: Database, keyring: Keyring) -> None:
        self.database = database
        self.replica = Replica(
            id=str(uuid.uuid4()),
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            version=version("token-broker")[:32],
            key_ids=" ".join(keyring.key_ids),
            primary_key_id=keyring.primary_kid,
            started_at=utcnow(),
            last_seen_at=utcnow(),
        )
        self._task = Background("replica-heartbeat")

    async def start(self) -> None:
        await self.beat()
        self._task.start(every(HEARTBEAT_SECONDS, self.beat))

    async def beat(self) -> None:
        now = utcnow()
        try:
            async with self.database.transaction() as session:
                replicas = ReplicaRepository(session)
                row = await replicas.get(self.replica.id)
                if row is None:
                    row = Replica.model_validate(self.replica.model_dump())
                    await replicas.purge_unseen_since(now - FORGET_AFTER)
                row.last_seen_at = now
                await replicas.save(row)
        except Exception as error:
            # The database may be down; readiness says so. The next beat tries again.
            log.warning("replica heartbeat not written: %s", type(error).__name__)

    async def stop(self) -> None:
        await self._task.stop()
        try:
            async with self.database.transaction() as session:
                await ReplicaRepository(session).delete(self.replica.id)
        except Exception as error:
            log.warning("replica heartbeat not removed: %s", type(error).__name__)


async def live_replicas(database: Database) -> list[Replica]:
    async with database.transaction() as session:
        return list(await ReplicaRepository(session).seen_since(utcnow() - LIVE_WITHIN))


def lacking_key(replicas: list[Replica], kid: str) -> list[Replica]:
    return [replica for replica in replicas if kid not in replica.key_id_list]


def describe(replica: Replica, now: datetime | None = None) -> str:
    seen = int(((now or utcnow()) - replica.last_seen_at).total_seconds())
    return (
        f"{replica.host} pid {replica.pid} (seen {max(0, seen)} s ago; "
        f"keys {', '.join(replica.key_id_list)}; primary {replica.primary_key_id})"
    )
