"""The task coordinator: one replica that moves async tasks from the object store
to the family deployments and makes sure each one ends.

Every ``poll_seconds`` (and at once when the ingress kicks it) it scans the
queue markers of unfinished tasks and, with compare-and-swap updates:

* dispatches ``PENDING`` tasks through the family's ``DeploymentHandle`` (Serve's
  own routing and queues; a full queue leaves the task ``PENDING`` in the store,
  so what waits in memory is bounded by ``max_queued_requests``);
* re-dispatches tasks whose worker lease expired (the worker died), up to
  ``max_attempts``, then fails them ("quarantined"); a worker that dies while
  this coordinator awaits it is retried at once;
* delivers webhooks from the outbox with exponential backoff, and keeps a dead
  letter after the last try;
* deletes records and files past the retention.

It keeps nothing that matters in memory: a restarted coordinator picks up from
the store. Leases and attempt numbers make a task run at most once at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from deployments.types import TaskRef
from ingress.async_tasks import task_envelope
from ingress.errors import StudioError
from ingress.inputs import FetchLimits
from ingress.jobs import build_job
from ingress.registry import Registry, ServiceConfig, deployment_name
from ingress.schemas.generation import ImageToImageRequest, TextToImageRequest
from ingress.settings import IngressSettings
from ingress.validation import parse
from storage.base import ObjectNotFound, ObjectStore, PreconditionFailed
from storage.factory import open_store
from storage.settings import StorageSettings
from storage.tasks import (
    OUTBOX_PREFIX,
    TaskRecord,
    TaskStore,
    dead_letter_key,
    queue_key,
    request_key,
)

log = logging.getLogger(__name__)

REQUEST_MODELS = {"getTextToImage": TextToImageRequest, "getImageToImage": ImageToImageRequest}
DISPATCH_LEASE_SECONDS = 60.0  # time a dispatched task may wait before a worker claims it
ORPHAN_MARKER_SECONDS = 60.0
DISPATCH_WINDOW = 32  # attempts in flight per deployment; Serve's own queue bounds beyond that
RETENTION_SWEEP_SECONDS = 600.0


class TaskCoordinator:
    """Plain class; ``ingress.builder`` binds it as a one-replica deployment."""

    def __init__(self, config: dict[str, Any], handles: dict[str, Any], *, start_loop: bool = True):
        self.settings = IngressSettings()
        storage = StorageSettings()
        self.registry = Registry(ServiceConfig.model_validate(config))
        self.handles = handles
        self.store: ObjectStore = open_store(storage)
        self.tasks = TaskStore(self.store)
        self.url_expiry = storage.url_expiry_seconds
        s = self.settings
        self.limits = FetchLimits(
            max_bytes=s.fetch_max_bytes, timeout_seconds=s.fetch_timeout_seconds, allow_loopback=s.allow_loopback_inputs
        )
        self.inflight: dict[str, asyncio.Task] = {}
        # A deployment that answered "full" gets no new attempts until this time.
        self._full_until: dict[str, float] = {}
        self._inflight_deployment: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._last_sweep = 0.0
        self._start_loop = start_loop
        self._loop_task: asyncio.Task | None = None

    def _ensure_loop(self) -> None:
        """Start the scan loop on the replica's event loop (first call or after a crash)."""
        if self._start_loop and (self._loop_task is None or self._loop_task.done()):
            self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    # -- public methods (called through the handle) -------------------------
    async def kick(self, tenant: str, task_id: str, deployment: str) -> None:
        """A new task was written: dispatch it now rather than at the next poll."""
        self._ensure_loop()
        if self._has_room(deployment):
            self._start(tenant, task_id, deployment)

    async def check_health(self) -> None:
        """Serve calls this every few seconds; it also (re)starts the scan loop."""
        self._ensure_loop()

    # -- the loop -----------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("coordinator tick failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.coordinator_poll_seconds)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def tick(self) -> None:
        """One scan: unfinished tasks, then the webhook outbox, then (rarely) retention."""
        for info, (task_id, tenant, deployment) in await asyncio.to_thread(self.tasks.queued):
            if task_id in self.inflight or not self._has_room(deployment):
                continue
            self._start(tenant, task_id, deployment, marker_age=time.time() - info.last_modified)
        await self._deliver_webhooks()
        if time.time() - self._last_sweep > RETENTION_SWEEP_SECONDS:
            self._last_sweep = time.time()
            await asyncio.to_thread(self.sweep_expired)

    def _has_room(self, deployment: str) -> bool:
        """Whether ``deployment`` may get another attempt now: it did not just answer
        "full", and fewer than ``DISPATCH_WINDOW`` of its attempts are in flight."""
        if self._full_until.get(deployment, 0) > time.time():
            return False
        return sum(1 for d in self._inflight_deployment.values() if d == deployment) < DISPATCH_WINDOW

    def _start(self, tenant: str, task_id: str, deployment: str, marker_age: float = 0.0) -> None:
        if task_id in self.inflight:
            return
        task = asyncio.create_task(self._drive(tenant, task_id, deployment, marker_age))
        self.inflight[task_id] = task
        self._inflight_deployment[task_id] = deployment

        def done(_):
            self.inflight.pop(task_id, None)
            self._inflight_deployment.pop(task_id, None)

        task.add_done_callback(done)

    # -- one task -----------------------------------------------------------
    async def _drive(self, tenant: str, task_id: str, deployment: str, marker_age: float) -> None:
        """Dispatch ``task_id`` if it needs it, await the worker, retry while it dies."""
        try:
            while True:
                attempt, record = await asyncio.to_thread(self._take_attempt, tenant, task_id)
                if record is None:
                    if marker_age > ORPHAN_MARKER_SECONDS:  # the submit died before writing its record
                        await asyncio.to_thread(self.store.delete, queue_key(task_id, tenant, deployment))
                        await asyncio.to_thread(self.store.delete, request_key(tenant, task_id))
                    return
                if record.terminal:
                    await asyncio.to_thread(self.tasks.settle, record)
                    return
                if attempt is None:
                    return  # running elsewhere, or waiting for its lease to expire
                if not await self._run_attempt(record, attempt):
                    return
        except Exception:
            log.exception("driving task %s failed; the next scan retries", task_id)

    def _take_attempt(self, tenant: str, task_id: str) -> tuple[int | None, TaskRecord | None]:
        """Claim the next attempt of a task that needs one (CAS). Returns (attempt, record)."""
        now = time.time()
        taken: list[int] = []

        def change(r: TaskRecord):
            expired = r.lease_expires_at is None or r.lease_expires_at < now
            if r.terminal or not expired:
                return False
            if r.cancel_requested:
                r.move("REVOKED", "cancelled" + (" (its worker was lost)" if r.status == "STARTED" else ""))
                return None
            if r.attempts >= r.max_attempts:
                r.fail("WorkerLost", f"quarantined: its worker was lost on each of {r.attempts} attempts")
                return None
            if r.status == "STARTED":
                r.move("PENDING", f"worker {r.lease_owner} lost on attempt {r.attempts}; retrying")
            r.attempts += 1
            r.lease_owner = "dispatch"
            r.lease_expires_at = now + DISPATCH_LEASE_SECONDS
            taken.append(r.attempts)
            return None

        record = self.tasks.update(tenant, task_id, change)
        return (taken[0] if taken else None), record

    async def _run_attempt(self, record: TaskRecord, attempt: int) -> bool:
        """Send one attempt to its family; True means "take another attempt now"."""
        from ray import exceptions as ray_errors
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        tenant, task_id = record.tenant, record.task_id
        try:
            job = await self._job(record)
        except StudioError as exc:
            await asyncio.to_thread(self._finish_failed, record, attempt, exc.error_type, exc.message)
            return False
        ref = TaskRef(tenant=tenant, task_id=task_id, attempt=attempt,
                      lease_seconds=self.settings.task_lease_seconds, renew_seconds=self.settings.task_renew_seconds)
        handle = self.handles[deployment_name(record.family, record.gpu)]
        try:
            outcome = await handle.run_task.remote(job, ref)
            log.info("task %s attempt %d: %s", task_id, attempt, outcome)
            return False
        except (BackPressureError, DeploymentUnavailableError):
            # Full: leave the task PENDING in the store and stop offering this
            # deployment work until the next scan (bounded work per scan).
            self._full_until[deployment_name(record.family, record.gpu)] = (
                time.time() + self.settings.coordinator_poll_seconds * 0.9
            )
            await asyncio.to_thread(self._give_back, tenant, task_id, attempt)
            return False
        except (ray_errors.ActorDiedError, ray_errors.ActorUnavailableError, ray_errors.RayActorError,
                ray_errors.RayTaskError) as exc:
            log.warning("task %s attempt %d: worker lost (%s); retrying", task_id, attempt, type(exc).__name__)
            await asyncio.to_thread(self._expire, tenant, task_id, attempt)
            return True

    async def _job(self, record: TaskRecord):
        body = await asyncio.to_thread(self.tasks.request, record.tenant, record.task_id)
        app = self.registry.app(record.app_id)
        if body is None or app is None:
            raise StudioError("the task's request is gone" if body is None else f"app {record.app_id} was removed")
        req = parse(REQUEST_MODELS[record.route], body)
        return await build_job(app, req, record.tenant, record.task_id, self.limits)

    def _finish_failed(self, record: TaskRecord, attempt: int, error: str, message: str) -> None:
        def change(r: TaskRecord):
            if r.terminal or r.attempts != attempt:
                return False
            r.fail(error, message)
            return None

        updated = self.tasks.update(record.tenant, record.task_id, change)
        if updated is not None and updated.terminal:
            self.tasks.settle(updated)

    def _give_back(self, tenant: str, task_id: str, attempt: int) -> None:
        """The family was full: undo the attempt; the task stays PENDING for a later scan."""

        def change(r: TaskRecord):
            if r.status != "PENDING" or r.attempts != attempt:
                return False
            r.attempts -= 1
            r.lease_owner = r.lease_expires_at = None
            return None

        self.tasks.update(tenant, task_id, change)

    def _expire(self, tenant: str, task_id: str, attempt: int) -> None:
        """The worker of ``attempt`` died: expire its lease so the next attempt goes now."""

        def change(r: TaskRecord):
            if r.terminal or r.attempts != attempt:
                return False
            r.lease_expires_at = 0.0
            return None

        self.tasks.update(tenant, task_id, change)

    # -- webhooks -----------------------------------------------------------
    async def _deliver_webhooks(self) -> None:
        from ingress.webhooks import WebhookPolicy, deliver, next_delay, sign_headers

        s = self.settings
        policy = WebhookPolicy(
            max_attempts=s.webhook_max_attempts, base_delay_seconds=s.webhook_base_delay_seconds,
            max_delay_seconds=s.webhook_max_delay_seconds,
        )
        now = time.time()
        for info in await asyncio.to_thread(self.store.list, OUTBOX_PREFIX):
            try:
                raw, etag = await asyncio.to_thread(self.store.get_versioned, info.key)
                entry = json.loads(raw)
            except (ObjectNotFound, ValueError):
                continue
            if entry.get("next_at", 0) > now:
                continue
            record = await asyncio.to_thread(self.tasks.get, entry["tenant"], entry["task_id"])
            secret = self.settings.webhook_secret(entry["tenant"])
            if record is None or not entry.get("url") or secret is None:
                await asyncio.to_thread(self.store.delete, info.key)
                continue
            env = await asyncio.to_thread(task_envelope, record, self.store, self.url_expiry)
            body = env.model_dump_json().encode()
            headers = sign_headers(secret, f"msg_{record.task_id}", body)
            result = await deliver(entry["url"], body, headers, policy, self.limits)
            entry["attempts"] = entry.get("attempts", 0) + 1
            entry["last"] = {"status": result.status, "error": result.error, "at": time.time()}
            if result.ok:
                await asyncio.to_thread(self.store.delete, info.key)
            elif result.retryable and entry["attempts"] < policy.max_attempts:
                entry["next_at"] = time.time() + next_delay(policy, entry["attempts"])
                try:
                    await asyncio.to_thread(self.store.put_if, info.key, json.dumps(entry).encode(), if_match=etag)
                except PreconditionFailed:
                    pass
            else:
                dead = {"entry": entry, "envelope": json.loads(body)}
                log.warning("webhook for task %s dead-lettered after %d attempts", record.task_id, entry["attempts"])
                await asyncio.to_thread(
                    self.store.put, dead_letter_key(record.tenant, record.task_id), json.dumps(dead).encode(),
                    "application/json",
                )
                await asyncio.to_thread(self.store.delete, info.key)

    # -- retention ----------------------------------------------------------
    def sweep_expired(self) -> int:
        """Delete tenant objects (records, files, lookups) older than the retention."""
        cutoff = time.time() - self.settings.retention_seconds
        removed = 0
        for info in self.store.list("tenants/"):
            if info.last_modified < cutoff:
                self.store.delete(info.key)
                removed += 1
        if removed:
            log.info("retention: deleted %d objects", removed)
        return removed
