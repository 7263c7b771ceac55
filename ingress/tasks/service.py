"""Async tasks at the ingress: submit (``celery: true``), status, cancel.

The ingress writes the task to the object store and returns at once; the
coordinator (``ingress.tasks.coordinator``) dispatches it. Status reads go to the
object store only, so they answer while the queue or a worker is down, through this
replica's :class:`~ingress.tasks.status_view.StatusView` (an answer is at most
``STUDIO_TASK_RENEW_SECONDS`` older than a store read).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

from deployments.catalog import deployment_name, route_output
from deployments.metrics import STUDIO_METRICS
from deployments.types import Job, job_to_payload
from ingress.contract.errors import NotFound, ValidationFailed
from ingress.contract.schemas.envelope import Envelope, output_meta
from ingress.contract.schemas.generation import GenerationRequest
from ingress.tasks.status_view import StatusView
from ingress.wiring.registry import AppConfig
from ingress.wiring.settings import IngressSettings
from storage.base import ObjectStore
from storage.tasks import DEFAULT_PRIORITY, TaskRecord, TaskStore, task_created_at

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
        if route_output(record.route) == "audio" and env.output:
            env.output = env.output[0]  # Text To Speech: one audio file's URL
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
        # Status answers: at most task_renew_seconds old (progress is written that often);
        # a finished task's envelope (with URLs) while the URLs keep half their lifetime.
        self.view = StatusView(
            tasks.get, tasks.find_by_reference, lambda r: task_envelope(r, tasks.store, url_expiry),
            max_age=settings.task_renew_seconds, finished_age=url_expiry / 2,
        )

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
        self, route: str, app: AppConfig, gpu: str, req: GenerationRequest, job: Job, echo: dict,
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
            priority=DEFAULT_PRIORITY if req.priority is None else req.priority,
            expires_at=now + self.settings.retention_seconds,
        )

        def store() -> tuple[TaskRecord, bool]:
            data, images = job_to_payload(job)
            return self.tasks.create(record, data, images, webhook=req.webhook)

        written_at = self.view.clock()
        stored, created = await asyncio.to_thread(store)
        if created:
            kick = asyncio.create_task(self.kick(tenant, task_id, deployment))
            self._kicks.add(kick)
            kick.add_done_callback(self._kicks.discard)
        env = task_envelope(stored, self.tasks.store, self.url_expiry)
        self.view.put(stored, env, written_at)  # a poll right after the submit costs no read
        return env

    async def status(self, tenant: str, task_id: str | None, reference_id: str | None = None) -> Envelope:
        """The task's envelope (by id, else by ``reference_id``), at most the view's
        ``max_age`` old; answered on the event loop when the view holds it."""
        env = None
        if task_id is not None:
            if _plausible_id(task_id):
                env = await self.view.get(tenant, task_id)
        elif reference_id is not None:
            env = await self.view.get_by_reference(tenant, reference_id)
        if env is None:
            raise NotFound("no such task")
        return env

    async def cancel(self, tenant: str, task_id: str) -> Envelope:
        """PENDING → REVOKED now; STARTED → flagged, the worker stops at its next step."""
        if not _plausible_id(task_id):
            raise NotFound("no such task")

        def change(r: TaskRecord):
            if r.terminal:
                return False
            r.cancel_requested = True
            if r.status == "PENDING":
                r.move("REVOKED", "cancelled before it started")
            return None

        read_at = self.view.clock()
        record, written = await asyncio.to_thread(self.tasks.apply, tenant, task_id, change)
        if record is None:  # no such task (or deleted since)
            raise NotFound("no such task")
        if record.status == "REVOKED":
            if written:
                STUDIO_METRICS.task_result(record.app_id, record.family, record.gpu, tenant, "REVOKED", None)
            await asyncio.to_thread(self.tasks.settle, record)
        env = await asyncio.to_thread(task_envelope, record, self.tasks.store, self.url_expiry)
        self.view.put(record, env, read_at)  # this replica's polls see the cancel at once
        return env


def _plausible_id(task_id: str) -> bool:
    return task_id.isalnum() and len(task_id) <= 64
