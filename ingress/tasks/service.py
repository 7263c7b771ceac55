"""Async tasks at the ingress: submit (``celery: true``), status, cancel.

The ingress writes the task to the object store and returns at once; the
coordinator (``ingress.tasks.coordinator``) dispatches it. Status reads go to the
object store only, so they answer while the queue or a worker is down.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

from deployments.catalog import deployment_name
from deployments.types import ImageJob, job_to_payload
from ingress.contract.errors import NotFound, ValidationFailed
from ingress.contract.schemas.envelope import Envelope, output_meta
from ingress.contract.schemas.generation import GenerationRequest
from ingress.wiring.registry import AppConfig
from ingress.wiring.settings import IngressSettings
from storage.base import ObjectStore
from storage.tasks import TaskRecord, TaskStore, task_created_at

Kick = Callable[[str, str, str], Coroutine[Any, Any, None]]  # async (tenant, task_id, deployment); run as a task


def body_digest(body: dict[str, Any]) -> str:
    """A stable hash of a (validated) request (key order does not matter)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def task_envelope(record: TaskRecord, store: ObjectStore, url_expiry: int) -> Envelope:
    """The contract's envelope for a task, with fresh expiring URLs when it succeeded."""
    env = Envelope(
        input=record.input,
        app_id=record.app_id,
        task_id=record.task_id,
        status=record.status,
        reference_id=record.reference_id,
        track_id=record.track_id,
        error=record.error,
        error_data=record.error_data,
        progress=record.progress,
    )
    if record.finished_at is not None:
        env.time_required = round(record.finished_at - record.created_at, 4)
    if record.status == "SUCCESS":
        env.output = [store.url(key, url_expiry) for key in record.output_keys]
        env.meta = output_meta(record.output_meta, time.time() + url_expiry)
    return env


class TaskService:
    """What the task routes do; blocking store calls run in threads."""

    def __init__(self, tasks: TaskStore, url_expiry: int, settings: IngressSettings, kick: Kick):
        self.tasks = tasks
        self.url_expiry = url_expiry
        self.settings = settings
        self.kick = kick
        self._kicks: set[asyncio.Task] = set()
        # Finished tasks never change: their envelopes (with URLs) are reused
        # while the URLs keep at least half their lifetime.
        self._finished: OrderedDict[tuple[str, str], tuple[float, Envelope]] = OrderedDict()
        self._finished_max = 10_000
        self._finished_lock = threading.Lock()

    async def replay(self, tenant: str, idempotency_key: str, digest: str) -> Envelope | None:
        """The envelope of the task an ``Idempotency-Key`` already made, if any (422 if the
        key was used with another request)."""
        bound = await asyncio.to_thread(self.tasks.idempotency_binding, tenant, idempotency_key)
        if bound is None:
            return None
        self._same_body(bound, digest)
        existing = await asyncio.to_thread(self.tasks.get, tenant, bound["task_id"])
        if existing is None:
            return None  # its first submit is still writing it, or died before: submit() finishes it
        return await asyncio.to_thread(task_envelope, existing, self.tasks.store, self.url_expiry)

    @staticmethod
    def _same_body(bound: dict[str, Any], digest: str) -> None:
        if bound.get("body_sha256") != digest:
            raise ValidationFailed("Idempotency-Key: already used with a different request body; use a new key")

    def _deadline(self, app: AppConfig) -> float:
        seconds = app.limits.task_deadline_seconds or self.settings.task_deadline_seconds
        return min(seconds, self.settings.retention_seconds)

    async def submit(
        self, route: str, app: AppConfig, gpu: str, req: GenerationRequest, job: ImageJob, echo: dict,
        tenant: str, idempotency_key: str | None, digest: str | None,
    ) -> Envelope:
        """Store a task whose job was built (inputs fetched, checked and sized) by the caller.

        Concurrent submits with one ``Idempotency-Key`` all answer with the one task
        that won the key and its record: never a 5xx, never two tasks."""
        task_id = job.request_id
        if idempotency_key is not None and digest is not None:
            bound = await asyncio.to_thread(self.tasks.claim_idempotency_key, tenant, idempotency_key, digest, task_id)
            if bound is not None:
                self._same_body(bound, digest)
                existing = await asyncio.to_thread(self.tasks.get, tenant, bound["task_id"])
                if existing is not None:
                    return await asyncio.to_thread(task_envelope, existing, self.tasks.store, self.url_expiry)
                task_id = job.request_id = bound["task_id"]  # the winner has not written it yet, or died: finish it
        now = time.time()
        deployment = deployment_name(app.family, gpu)
        record = TaskRecord(
            task_id=task_id, tenant=tenant, app_id=app.app_id, route=route, family=app.family, gpu=gpu,
            deployment=deployment,
            reference_id=req.reference_id, input=echo, max_attempts=self.settings.task_max_attempts,
            webhook=bool(req.webhook), track_id=req.track_id, created_at=now,
            # From the id, so every racing writer of this task names the same queue marker.
            deadline_at=task_created_at(task_id) + self._deadline(app),
            expires_at=now + self.settings.retention_seconds,
        )

        def store() -> tuple[TaskRecord, bool]:
            data, images = job_to_payload(job)
            return self.tasks.create(record, data, images, webhook=req.webhook)

        stored, created = await asyncio.to_thread(store)
        if created:
            kick = asyncio.create_task(self.kick(tenant, task_id, deployment))
            self._kicks.add(kick)
            kick.add_done_callback(self._kicks.discard)
        return task_envelope(stored, self.tasks.store, self.url_expiry)

    def _lookup(self, tenant: str, task_id: str | None, reference_id: str | None) -> TaskRecord:
        if task_id is None and reference_id is not None:
            task_id = self.tasks.find_by_reference(tenant, reference_id)
        record = None
        if task_id is not None and _plausible_id(task_id):
            record = self.tasks.get(tenant, task_id)
        if record is None:
            raise NotFound("no such task")
        return record

    def _cached(self, tenant: str, task_id: str | None) -> Envelope | None:
        cached = self._finished.get((tenant, task_id)) if task_id is not None else None
        return cached[1] if cached is not None and cached[0] > time.time() else None

    def _status(self, tenant: str, task_id: str | None, reference_id: str | None) -> Envelope:
        now = time.time()
        if (env := self._cached(tenant, task_id)) is not None:
            return env
        record = self._lookup(tenant, task_id, reference_id)
        env = task_envelope(record, self.tasks.store, self.url_expiry)
        if record.terminal:
            with self._finished_lock:
                self._finished[(tenant, record.task_id)] = (now + self.url_expiry / 2, env)
                if len(self._finished) > self._finished_max:
                    self._finished.popitem(last=False)
        return env

    async def status(self, tenant: str, task_id: str | None, reference_id: str | None = None) -> Envelope:
        # A finished task's envelope is answered on the loop: no thread hop, no IO.
        if (env := self._cached(tenant, task_id)) is not None:
            return env
        return await asyncio.to_thread(self._status, tenant, task_id, reference_id)

    async def cancel(self, tenant: str, task_id: str) -> Envelope:
        """PENDING → REVOKED now; STARTED → flagged, the worker stops at its next step."""
        await asyncio.to_thread(self._lookup, tenant, task_id, None)

        def change(r: TaskRecord):
            if r.terminal:
                return False
            r.cancel_requested = True
            if r.status == "PENDING":
                r.move("REVOKED", "cancelled before it started")
            return None

        record = await asyncio.to_thread(self.tasks.update, tenant, task_id, change)
        if record is None:  # deleted (expired) since the lookup
            raise NotFound("no such task")
        if record.status == "REVOKED":
            await asyncio.to_thread(self.tasks.settle, record)
        return await asyncio.to_thread(task_envelope, record, self.tasks.store, self.url_expiry)


def _plausible_id(task_id: str) -> bool:
    return task_id.isalnum() and len(task_id) <= 64
