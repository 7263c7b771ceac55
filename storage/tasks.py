"""Task records of async jobs, kept in the object store.

Layout (every key but the queue and outbox is under the tenant):

* ``tenants/<t>/tasks/<id>/record.json`` — the :class:`TaskRecord` (state,
  history with timestamps, progress, lease, outputs, error).
* ``tenants/<t>/tasks/<id>/<nonce>/job.json`` and ``.../<nonce>/<input>.png`` —
  the payload the worker needs: the job as validated and sized at submit, its
  input images captured at submit, and the webhook URL. ``<nonce>`` is fresh per
  submit and the record names the payload it was created with, so two racing
  submits of one task (an idempotency key) never overwrite each other's inputs;
  the loser deletes its own. Deleted when the task ends.
* ``tenants/<t>/refs/<sha256(reference_id)>.json`` and
  ``tenants/<t>/idempotency/<sha256(key)>.json`` — lookups to a task id.
* ``queue/<id>.<tenant>.<deployment>`` — one empty marker per unfinished task,
  everything the coordinator needs in its key, so a scan is one listing, and
  its work is bounded by live tasks, not history.
* ``outbox/<id>.<tenant>.json`` — a webhook still to deliver.

Every change to a record is a compare-and-swap (:meth:`TaskStore.update`), so
the ingress, the coordinator and a worker never lose each other's writes, and
only one worker can claim a given attempt. A record in a terminal state is
never written again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

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


def task_created_at(task_id: str) -> float:
    """When ``task_id`` was made (Unix time): every writer of one task agrees on it."""
    return int(task_id[:16], 16) / 1e9


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def record_key(tenant: str, task_id: str) -> str:
    return f"tenants/{tenant}/tasks/{task_id}/record.json"


def payload_prefix(tenant: str, task_id: str, nonce: str) -> str:
    return f"tenants/{tenant}/tasks/{task_id}/{nonce}/"


def ref_key(tenant: str, reference_id: str) -> str:
    return f"tenants/{tenant}/refs/{_digest(reference_id)}.json"


def idempotency_key(tenant: str, key: str) -> str:
    return f"tenants/{tenant}/idempotency/{_digest(key)}.json"


DEFAULT_PRIORITY = 5
MAX_PRIORITY = 9


class QueueEntry(NamedTuple):
    """What a queue marker's key says of its task."""

    task_id: str
    tenant: str
    deployment: str
    deadline_at: float | None = None
    priority: int = DEFAULT_PRIORITY


def queue_key(task_id: str, tenant: str, deployment: str, deadline_at: float | None = None,
              priority: int = DEFAULT_PRIORITY) -> str:
    """The marker's key carries what the coordinator needs: no read per task to scan.
    ``{task_id}.{tenant}.{deployment}[.{deadline}][.p{priority}]``."""
    deadline = "" if deadline_at is None else f".{math.ceil(deadline_at)}"
    rank = "" if priority == DEFAULT_PRIORITY else f".p{priority}"
    return f"{QUEUE_PREFIX}{task_id}.{tenant}.{deployment}{deadline}{rank}"


def parse_queue_key(key: str) -> QueueEntry | None:
    """The :class:`QueueEntry` of a queue marker key (None if malformed)."""
    parts = key.removeprefix(QUEUE_PREFIX).split(".")
    if not 3 <= len(parts) <= 5 or not all(parts):
        return None
    deadline, priority = None, DEFAULT_PRIORITY
    for extra in parts[3:]:
        if extra.isdigit() and deadline is None and priority == DEFAULT_PRIORITY:
            deadline = float(extra)
        elif len(extra) == 2 and extra[0] == "p" and extra[1].isdigit():
            priority = int(extra[1])
        else:
            return None
    return QueueEntry(parts[0], parts[1], parts[2], deadline, priority)


def outbox_key(task_id: str, tenant: str) -> str:
    return f"{OUTBOX_PREFIX}{task_id}.{tenant}.json"


def parse_outbox_key(key: str) -> tuple[str, str] | None:
    """``(task_id, tenant)`` of an outbox key (None if malformed)."""
    parts = key.removeprefix(OUTBOX_PREFIX).split(".")
    return (parts[0], parts[1]) if len(parts) == 3 and parts[2] == "json" and all(parts) else None


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
    deployment: str = Field(description="The family deployment that runs it (named by the ingress).")
    reference_id: str | None = None
    input: dict[str, Any] = Field(default_factory=dict, description="The request as echoed, secrets removed.")
    status: Status = "PENDING"
    history: list[Transition] = Field(default_factory=list)
    progress: float = 0.0
    attempts: int = Field(0, description="Attempts dispatched; numbers are never reused.")
    unclaimed: int = Field(0, description="Of those, attempts no worker ever claimed (they do not count).")
    max_attempts: int = 3
    lease_owner: str | None = Field(None, description="Who holds the current attempt: a worker, or 'dispatch'.")
    lease_seq: int = Field(0, description="Bumped by every lease write (dispatch, claim, renewal).")
    lease_seconds: float | None = Field(
        None, description="The holder's promise: it writes again within this long, or may be presumed lost."
    )
    deadline_at: float | None = Field(None, description="Unix time after which the task fails with Timeout.")
    priority: int = Field(DEFAULT_PRIORITY, ge=0, le=MAX_PRIORITY,
                          description="0..9, higher first among its tenant's queued tasks.")
    payload_key: str | None = Field(None, description="The job payload this task was created with.")
    write_token: str | None = Field(None, description="Who wrote this version: one token per update call.")
    cancel_requested: bool = False
    output_keys: list[str] = Field(default_factory=list)
    output_meta: dict[str, Any] = Field(
        default_factory=dict, description="What the family said about the outputs (images: seeds, width, height)."
    )
    error: str | None = None
    error_data: str | None = None
    webhook: bool = False
    track_id: str | None = None
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def runs(self) -> int:
        """Attempts that a worker claimed (or may have): what the quarantine counts."""
        return self.attempts - self.unclaimed

    def move(self, status: Status, note: str | None = None, now: float | None = None) -> None:
        """Change state and append the transition to the history."""
        now = time.time() if now is None else now
        self.status = status
        self.history.append(Transition(status=status, at=now, note=note))
        if status == "STARTED":
            self.started_at = now
        if status in TERMINAL:
            self.finished_at = now
            self.release_lease()
            if status == "SUCCESS":
                self.progress = 1.0

    def fail(self, error: str, error_data: str, now: float | None = None) -> None:
        self.error, self.error_data = error, error_data
        self.move("FAILURE", f"{error}: {error_data}", now)

    def hold_lease(self, owner: str, seconds: float) -> None:
        """Take or renew the lease: ``owner`` promises to write again within ``seconds``."""
        self.lease_owner = owner
        self.lease_seconds = seconds
        self.lease_seq += 1

    def release_lease(self) -> None:
        """No one holds the task (its holder is known to be gone, or it ended)."""
        self.lease_owner = None
        self.lease_seconds = None
        self.lease_seq += 1


class TaskStore:
    """Reads and compare-and-swap updates of task records on an ``ObjectStore``."""

    def __init__(self, store: ObjectStore, cas_retries: int = 20):
        self.store = store
        self.cas_retries = cas_retries

    # -- creation ---------------------------------------------------------
    def create(
        self, record: TaskRecord, job: dict[str, Any], inputs: dict[str, bytes] | None = None,
        webhook: str | None = None,
    ) -> tuple[TaskRecord, bool]:
        """Write the payload (job, captured inputs, webhook URL), the queue marker, then the
        record, created only if absent. Returns ``(stored record, created)``: when the task
        already exists (a racing submit with the same idempotency key won, or a retried
        write of ours landed), the stored record is returned and our own payload deleted.
        A marker or payload without a record, left by a crash, is swept later."""
        t, tid = record.tenant, record.task_id
        prefix = payload_prefix(t, tid, secrets.token_hex(6))
        keys = {name: f"{prefix}{name}.png" for name in (inputs or {})}
        for name, data in (inputs or {}).items():
            self.store.put(keys[name], data, "image/png")
        payload = {"job": job, "inputs": keys, "webhook": webhook}
        record.payload_key = f"{prefix}job.json"
        self.store.put(record.payload_key, json.dumps(payload).encode(), "application/json")
        self.store.put(queue_key(tid, t, record.deployment, record.deadline_at, record.priority), b"", "application/octet-stream")
        record.move("PENDING", "submitted", record.created_at)
        created, current = self._create_or_read(record_key(t, tid), record.model_dump_json().encode())
        if not created:
            existing = TaskRecord.model_validate_json(current)
            if existing.payload_key == record.payload_key:
                return existing, True  # our own write, retried by the client library
            for key in [*keys.values(), record.payload_key]:
                self.store.delete(key)
            return existing, False
        if record.reference_id:
            self.store.put(ref_key(t, record.reference_id), json.dumps({"task_id": tid}).encode(), "application/json")
        return record, True

    def claim_idempotency_key(self, tenant: str, key: str, body_hash: str, task_id: str) -> dict[str, Any] | None:
        """Bind ``key`` to ``task_id``; if it was already bound to another task, return that binding."""
        entry = json.dumps({"task_id": task_id, "body_sha256": body_hash, "at": time.time()}).encode()
        created, current = self._create_or_read(idempotency_key(tenant, key), entry)
        if created:
            return None
        bound = json.loads(current)
        return None if bound.get("task_id") == task_id else bound  # None: a retry of our own write

    def _create_or_read(self, key: str, data: bytes, tries: int = 10) -> tuple[bool, bytes]:
        """Create ``key`` if absent: ``(True, data)``; else ``(False, what is there)``.

        A create that loses may find nothing to read yet: on S3 the other write may still
        be committing (409 ConditionalRequestConflict), or may have failed. So the create
        is tried again, with a short backoff, until one of the two happens."""
        for attempt in range(tries):
            try:
                self.store.put_if(key, data, if_absent=True)
                return True, data
            except PreconditionFailed:
                try:
                    return False, self.store.get(key)
                except ObjectNotFound:
                    time.sleep(min(0.5, 0.02 * 2**attempt))
        raise TimeoutError(f"{key}: a conditional create kept conflicting")  # transient: the caller may retry

    def idempotency_binding(self, tenant: str, key: str) -> dict[str, Any] | None:
        """What ``key`` is bound to (``{"task_id", "body_sha256", "at"}``), or None."""
        try:
            return json.loads(self.store.get(idempotency_key(tenant, key)))
        except (ObjectNotFound, ValueError):
            return None

    # -- reads ------------------------------------------------------------
    def get(self, tenant: str, task_id: str) -> TaskRecord | None:
        try:
            return TaskRecord.model_validate_json(self.store.get(record_key(tenant, task_id)))
        except (ObjectNotFound, ValueError):
            return None

    def payload(self, record: TaskRecord) -> dict[str, Any] | None:
        """The job payload of ``record``: ``{"job", "inputs": {name: key}, "webhook"}``."""
        if record.payload_key is None:
            return None
        try:
            return json.loads(self.store.get(record.payload_key))
        except (ObjectNotFound, ValueError):
            return None

    def find_by_reference(self, tenant: str, reference_id: str) -> str | None:
        try:
            return json.loads(self.store.get(ref_key(tenant, reference_id)))["task_id"]
        except (ObjectNotFound, ValueError, KeyError):
            return None

    def queued(self) -> list[tuple[ObjectInfo, QueueEntry]]:
        """Markers of unfinished tasks, oldest first: ``(info, entry)``."""
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
        """:meth:`apply`, returning only the record."""
        return self.apply(tenant, task_id, change)[0]

    def apply(
        self, tenant: str, task_id: str, change: Callable[[TaskRecord], bool | None]
    ) -> tuple[TaskRecord | None, bool]:
        """Read-modify-write with compare-and-swap, retried on conflict.

        ``change`` mutates a fresh copy of the record on every try (it may run more
        than once); returning ``False`` means "no write". Returns ``(record, written)``:
        the record as stored afterwards (None if there is none) and whether this
        call's change is what was stored. Every version this call writes carries one
        token of its own, so a write of ours that landed although its answer said
        otherwise (the client library retried it; S3 answered 409 while it was still
        committing) is recognised, whichever of our tries it was.
        """
        key = record_key(tenant, task_id)
        token = secrets.token_hex(8)
        for _ in range(self.cas_retries):
            try:
                raw, etag = self.store.get_versioned(key)
            except ObjectNotFound:
                return None, False
            record = TaskRecord.model_validate_json(raw)
            if record.write_token == token:  # an earlier try of ours landed after all
                return record, True
            if change(record) is False:
                return record, False
            record.write_token = token
            try:
                self.store.put_if(key, record.model_dump_json().encode(), if_match=etag)
                return record, True
            except PreconditionFailed:
                continue
        raise TimeoutError(f"task {task_id}: too many concurrent updates")  # contention: transient

    def settle(self, record: TaskRecord) -> None:
        """After a terminal state: queue a webhook if asked for, drop the marker and the payload.

        Idempotent, and called again by the coordinator for a terminal task whose marker
        is still there (its writer died before settling). The webhook is queued only while
        the marker exists, so a settle that comes after the marker went (after the webhook
        may have been delivered) never queues it a second time."""
        marker = queue_key(record.task_id, record.tenant, record.deployment, record.deadline_at, record.priority)
        payload = self.payload(record) or {}
        if record.webhook and self.store.exists(marker):
            entry = {"tenant": record.tenant, "task_id": record.task_id, "url": payload.get("webhook"),
                     "attempts": 0, "next_at": 0}
            try:
                self.store.put_if(outbox_key(record.task_id, record.tenant), json.dumps(entry).encode(),
                                  if_absent=True)
            except PreconditionFailed:
                pass
        self.store.delete(marker)
        for key in (payload.get("inputs") or {}).values():
            self.store.delete(key)
        if record.payload_key is not None:
            self.store.delete(record.payload_key)
