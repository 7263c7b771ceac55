"""Task records of async jobs, kept in the object store.

Layout (every key but the queue and outbox is under the tenant):

* ``tenants/<t>/tasks/<id>/record.json`` — the :class:`TaskRecord` (state,
  history with timestamps, progress, lease, outputs, error).
* ``tenants/<t>/tasks/<id>/request.json`` — the full validated request the
  worker needs (input URLs with their query strings, inline images); deleted
  when the task ends.
* ``tenants/<t>/refs/<sha256(reference_id)>.json`` and
  ``tenants/<t>/idempotency/<sha256(key)>.json`` — lookups to a task id.
* ``queue/<id>.<tenant>.<deployment>`` — one empty marker per unfinished task,
  everything the coordinator needs in its key, so a scan is one listing, and
  its work is bounded by live tasks, not history.
* ``outbox/<id>.json`` — a webhook still to deliver.

Every change to a record is a compare-and-swap (:meth:`TaskStore.update`), so
the ingress, the coordinator and a worker never lose each other's writes, and
only one worker can claim a given attempt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field

from storage.base import ObjectInfo, ObjectNotFound, ObjectStore, PreconditionFailed

log = logging.getLogger(__name__)

Status = Literal["PENDING", "STARTED", "SUCCESS", "FAILURE", "REVOKED"]
TERMINAL: frozenset[str] = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
QUEUE_PREFIX = "queue/"
OUTBOX_PREFIX = "outbox/"


def new_task_id() -> str:
    """32 hex characters that sort in creation order (so the queue is served FIFO)."""
    return f"{time.time_ns():016x}{secrets.token_hex(8)}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def record_key(tenant: str, task_id: str) -> str:
    return f"tenants/{tenant}/tasks/{task_id}/record.json"


def request_key(tenant: str, task_id: str) -> str:
    return f"tenants/{tenant}/tasks/{task_id}/request.json"


def ref_key(tenant: str, reference_id: str) -> str:
    return f"tenants/{tenant}/refs/{_digest(reference_id)}.json"


def idempotency_key(tenant: str, key: str) -> str:
    return f"tenants/{tenant}/idempotency/{_digest(key)}.json"


def queue_key(task_id: str, tenant: str, deployment: str) -> str:
    return f"{QUEUE_PREFIX}{task_id}.{tenant}.{deployment}"


def parse_queue_key(key: str) -> tuple[str, str, str] | None:
    """``(task_id, tenant, deployment)`` of a queue marker key (None if malformed)."""
    parts = key.removeprefix(QUEUE_PREFIX).split(".")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


def outbox_key(task_id: str) -> str:
    return f"{OUTBOX_PREFIX}{task_id}.json"


def dead_letter_key(tenant: str, task_id: str) -> str:
    return f"tenants/{tenant}/webhooks/dead/{task_id}.json"


class Transition(BaseModel):
    status: Status
    at: float
    note: str | None = None


class TaskRecord(BaseModel):
    """Everything known about one async task."""

    task_id: str
    tenant: str
    app_id: str
    route: str
    family: str
    gpu: str
    reference_id: str | None = None
    input: dict[str, Any] = Field(default_factory=dict, description="The request as echoed, secrets removed.")
    status: Status = "PENDING"
    history: list[Transition] = Field(default_factory=list)
    progress: float = 0.0
    attempts: int = 0
    max_attempts: int = 3
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    cancel_requested: bool = False
    output_keys: list[str] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=list)
    width: int | None = None
    height: int | None = None
    error: str | None = None
    error_data: str | None = None
    webhook: bool = False
    track_id: str | None = None
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None

    @property
    def deployment(self) -> str:
        """The family deployment that runs it, ``<family>-<gpu>``."""
        return f"{self.family}-{self.gpu}"

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def move(self, status: Status, note: str | None = None, now: float | None = None) -> None:
        """Change state and append the transition to the history."""
        now = time.time() if now is None else now
        self.status = status
        self.history.append(Transition(status=status, at=now, note=note))
        if status == "STARTED":
            self.started_at = now
        if status in TERMINAL:
            self.finished_at = now
            self.lease_owner = None
            self.lease_expires_at = None
            if status == "SUCCESS":
                self.progress = 1.0

    def fail(self, error: str, error_data: str, now: float | None = None) -> None:
        self.error, self.error_data = error, error_data
        self.move("FAILURE", f"{error}: {error_data}", now)


class TaskStore:
    """Reads and compare-and-swap updates of task records on an ``ObjectStore``."""

    def __init__(self, store: ObjectStore, cas_retries: int = 20):
        self.store = store
        self.cas_retries = cas_retries

    # -- creation ---------------------------------------------------------
    def create(self, record: TaskRecord, request: dict[str, Any]) -> None:
        """Write the request, the queue marker, then the record (a marker without a
        record, left by a crash, is swept by the coordinator)."""
        t, tid = record.tenant, record.task_id
        self.store.put(request_key(t, tid), json.dumps(request).encode(), "application/json")
        self.store.put(queue_key(tid, t, record.deployment), b"", "application/octet-stream")
        record.move("PENDING", "submitted", record.created_at)
        self.store.put_if(record_key(t, tid), record.model_dump_json().encode(), if_absent=True)
        if record.reference_id:
            self.store.put(ref_key(t, record.reference_id), json.dumps({"task_id": tid}).encode(), "application/json")

    def claim_idempotency_key(self, tenant: str, key: str, body_hash: str, task_id: str) -> dict[str, Any] | None:
        """Bind ``key`` to ``task_id``; if it was already bound, return that binding instead."""
        entry = json.dumps({"task_id": task_id, "body_sha256": body_hash, "at": time.time()}).encode()
        try:
            self.store.put_if(idempotency_key(tenant, key), entry, if_absent=True)
            return None
        except PreconditionFailed:
            return json.loads(self.store.get(idempotency_key(tenant, key)))

    # -- reads ------------------------------------------------------------
    def get(self, tenant: str, task_id: str) -> TaskRecord | None:
        try:
            return TaskRecord.model_validate_json(self.store.get(record_key(tenant, task_id)))
        except (ObjectNotFound, ValueError):
            return None

    def request(self, tenant: str, task_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.store.get(request_key(tenant, task_id)))
        except ObjectNotFound:
            return None

    def find_by_reference(self, tenant: str, reference_id: str) -> str | None:
        try:
            return json.loads(self.store.get(ref_key(tenant, reference_id)))["task_id"]
        except (ObjectNotFound, ValueError, KeyError):
            return None

    def queued(self) -> list[tuple[ObjectInfo, tuple[str, str, str]]]:
        """Markers of unfinished tasks, oldest first: ``(info, (task_id, tenant, deployment))``."""
        found = []
        for info in self.store.list(QUEUE_PREFIX):
            parsed = parse_queue_key(info.key)
            if parsed is not None:
                found.append((info, parsed))
        return sorted(found, key=lambda item: item[0].key)

    # -- updates ----------------------------------------------------------
    def update(
        self, tenant: str, task_id: str, change: Callable[[TaskRecord], bool | None]
    ) -> TaskRecord | None:
        """Read-modify-write with compare-and-swap, retried on conflict.

        ``change`` mutates the record; returning ``False`` means "no write".
        Returns the record as stored afterwards, or None if there is no record.
        """
        key = record_key(tenant, task_id)
        for _ in range(self.cas_retries):
            try:
                raw, etag = self.store.get_versioned(key)
            except ObjectNotFound:
                return None
            record = TaskRecord.model_validate_json(raw)
            if change(record) is False:
                return record
            try:
                self.store.put_if(key, record.model_dump_json().encode(), if_match=etag)
                return record
            except PreconditionFailed:
                continue
        raise RuntimeError(f"task {task_id}: too many concurrent updates")

    def settle(self, record: TaskRecord) -> None:
        """After a terminal state: queue a webhook if asked for, drop the marker and the request."""
        if record.webhook:
            url = (self.request(record.tenant, record.task_id) or {}).get("webhook")
            entry = {"tenant": record.tenant, "task_id": record.task_id, "url": url, "attempts": 0, "next_at": 0}
            try:
                self.store.put_if(outbox_key(record.task_id), json.dumps(entry).encode(), if_absent=True)
            except PreconditionFailed:
                pass
        self.store.delete(queue_key(record.task_id, record.tenant, record.deployment))
        self.store.delete(request_key(record.tenant, record.task_id))
