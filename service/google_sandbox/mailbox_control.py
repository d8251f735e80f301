"""Changing a sandbox mailbox through the control API, as the user (or mail arriving) would.

Each change goes through `history.py`, so it appears in `messages.list` and `messages.get`
at once, appends history records with increasing ids, and is published to the user's
watch (`pubsub.py`): added messages (`messageAdded`), label changes (Gmail's
messages.modify: a `labelAdded` and a `labelRemoved` record), and deletions for good
(`messageDeleted`; moving to the trash is a label change, as in Gmail). Expiring the
history makes every history id issued so far answer 404. A steady generator changes
many mailboxes at a given rate for benchmarks and logs each change it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from google_sandbox.history import NEW_MESSAGE_LABELS, HistoryRecord, check_labels
from google_sandbox.records import SandboxUser
from google_sandbox.state import SandboxState

ChangeKind = Literal["add", "relabel", "delete"]
_RECENT = 50  # the generator changes messages among the newest ones


def _user(state: SandboxState, email: str) -> SandboxUser:
    user = state.users.get(email.strip().lower())
    if user is None:
        raise HTTPException(404, f"no sandbox user {email}")
    return user


def _labels(label_ids: list[str]) -> None:
    unknown = check_labels(label_ids)
    if unknown:
        raise HTTPException(400, f"Invalid label: {unknown[0]}")


def publish(state: SandboxState, user: SandboxUser, records: list[HistoryRecord]) -> None:
    for record in records:
        state.pubsub.publish(user.email, record)


def add_message(
    state: SandboxState, user: SandboxUser, *, labels: frozenset[str] = NEW_MESSAGE_LABELS,
    thread_id: str | None = None, **details: str,
) -> HistoryRecord:  # fmt: skip
    record = user.history.add(labels=labels, thread_id=thread_id, **details)
    publish(state, user, [record])
    return record


def modify_message(
    state: SandboxState, user: SandboxUser, message_id: str, add: list[str], remove: list[str]
) -> list[HistoryRecord]:
    message = user.message_index.get(message_id)
    if message is None:
        raise HTTPException(404, f"no message {message_id}")
    records = user.history.relabel(message, add, remove)
    publish(state, user, records)
    return records


def delete_message(state: SandboxState, user: SandboxUser, message_id: str) -> HistoryRecord:
    message = user.message_index.get(message_id)
    if message is None:
        raise HTTPException(404, f"no message {message_id}")
    record = user.history.delete(message)
    publish(state, user, [record])
    return record


class NewMessage(BaseModel):
    labelIds: list[str] = Field(default_factory=lambda: sorted(NEW_MESSAGE_LABELS))
    threadId: str | None = Field(default=None, description="Join an existing thread.")
    subject: str = "A new message"
    sender: str = "Sandbox Sender <sender@sandbox.example>"


class Modify(BaseModel):
    addLabelIds: list[str] = Field(default_factory=list)
    removeLabelIds: list[str] = Field(default_factory=list)


def _default_mix() -> dict[ChangeKind, float]:
    return {"add": 0.5, "relabel": 0.4, "delete": 0.1}


class GeneratorSpec(BaseModel):
    changes_per_second: float = Field(gt=0, le=10_000)
    emails: list[str] | None = Field(default=None, description="Default: every user.")
    seconds: float | None = Field(default=None, gt=0, description="Default: until stopped.")
    mix: dict[ChangeKind, float] = Field(default_factory=_default_mix)


@dataclass(frozen=True)
class GeneratedChange:
    email: str
    kind: ChangeKind
    message_id: str
    history_id: int  # the last record the change made
    at: float


class ChangeGenerator:
    """Changes mailboxes at a steady average rate (Poisson arrivals) until stopped."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.log: deque[GeneratedChange] = deque(maxlen=1_000_000)
        self.rng = random.Random()  # noqa: S311  (test traffic, not secrecy)
        self._task: asyncio.Task[None] | None = None
        self.spec: GeneratorSpec | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, spec: GeneratorSpec) -> None:
        await self.stop()
        self.spec = spec
        self.log.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(spec))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, spec: GeneratorSpec) -> None:
        emails = [e.lower() for e in spec.emails] if spec.emails else list(self.state.users)
        kinds, weights = zip(*spec.mix.items(), strict=True)
        deadline = None if spec.seconds is None else time.monotonic() + spec.seconds
        while deadline is None or time.monotonic() < deadline:
            await asyncio.sleep(self.rng.expovariate(spec.changes_per_second))
            user = self.state.users.get(self.rng.choice(emails))
            if user is not None:
                self.change(user, self.rng.choices(kinds, weights)[0])

    def change(self, user: SandboxUser, kind: ChangeKind) -> GeneratedChange:
        recent = user.mailbox[:_RECENT]
        if kind == "delete" and recent:
            record = delete_message(self.state, user, self.rng.choice(recent).id)
            records = [record]
        elif kind == "relabel" and recent:
            message = self.rng.choice(recent)
            add, remove = self._relabelling(message.labels)
            records = modify_message(self.state, user, message.id, add, remove)
        else:
            kind = "add"
            replying = recent and self.rng.random() < 0.3
            thread = self.rng.choice(recent).thread_id if replying else None
            records = [add_message(self.state, user, thread_id=thread)]
        last = records[-1]
        change = GeneratedChange(user.email, kind, last.message.id, last.id, last.at)
        self.log.append(change)
        return change

    def _relabelling(self, labels: frozenset[str]) -> tuple[list[str], list[str]]:
        choices = [
            ([], ["UNREAD"]) if "UNREAD" in labels else (["UNREAD"], []),
            ([], ["STARRED"]) if "STARRED" in labels else (["STARRED"], []),
            ([], ["INBOX"]) if "INBOX" in labels else (["INBOX"], []),
            ([], ["Label_1"]) if "Label_1" in labels else (["Label_1"], []),
        ]
        return self.rng.choice(choices)

    def report(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "changes": len(self.log),
            "spec": self.spec.model_dump() if self.spec else None,
        }


def mailbox_control_router(state: SandboxState, generator: ChangeGenerator) -> APIRouter:
    router = APIRouter(prefix="/_sandbox", tags=["sandbox control"])

    @router.post("/users/{email}/mailbox/messages", status_code=201, summary="A message arrives")
    async def add(email: str, spec: NewMessage) -> dict[str, Any]:
        user = _user(state, email)
        _labels(spec.labelIds)
        record = add_message(
            state, user, labels=frozenset(spec.labelIds), thread_id=spec.threadId,
            subject=spec.subject, sender=spec.sender,
        )  # fmt: skip
        return {"message": record.as_resource()["messagesAdded"][0]["message"],
                "history": [record.as_resource()]}  # fmt: skip

    @router.post(
        "/users/{email}/mailbox/messages/{message_id}/modify",
        summary="Add and remove labels (Gmail's messages.modify)",
    )
    async def modify(email: str, message_id: str, spec: Modify) -> dict[str, Any]:
        user = _user(state, email)
        _labels([*spec.addLabelIds, *spec.removeLabelIds])
        records = modify_message(state, user, message_id, spec.addLabelIds, spec.removeLabelIds)
        return {"history": [record.as_resource() for record in records]}

    @router.delete(
        "/users/{email}/mailbox/messages/{message_id}",
        summary="Delete a message for good (Gmail's messages.delete)",
    )
    async def delete(email: str, message_id: str) -> dict[str, Any]:
        record = delete_message(state, _user(state, email), message_id)
        return {"history": [record.as_resource()]}

    @router.get("/users/{email}/mailbox/history", summary="Every history record still kept")
    async def history(email: str) -> dict[str, Any]:
        mailbox = _user(state, email).history
        mailbox.expire(state.history_retention_seconds)
        return {
            "historyId": str(mailbox.current),
            "oldestStartHistoryId": str(mailbox.floor),
            "history": [record.as_resource() for record in mailbox.history()],
        }

    @router.post(
        "/users/{email}/mailbox/history/expire",
        summary="Forget the history: every history id issued so far answers 404",
    )
    async def expire(email: str) -> dict[str, str]:
        mailbox = _user(state, email).history
        mailbox.expire_all()
        return {"historyId": str(mailbox.current)}

    @router.post("/generator", status_code=201, summary="Change mailboxes at a steady rate")
    async def start(spec: GeneratorSpec) -> dict[str, Any]:
        await generator.start(spec)
        return generator.report()

    @router.get("/generator", summary="The generator's state")
    async def report() -> dict[str, Any]:
        return generator.report()

    @router.get("/generator/changes", summary="The changes made, from position `since`")
    async def changes(since: int = 0) -> list[dict[str, Any]]:
        made = list(generator.log)[since:]
        return [
            {"email": c.email, "kind": c.kind, "message_id": c.message_id,
             "history_id": str(c.history_id), "at": c.at}
            for c in made
        ]  # fmt: skip

    @router.delete("/generator", summary="Stop changing mailboxes")
    async def stop() -> dict[str, Any]:
        await generator.stop()
        return generator.report()

    return router
