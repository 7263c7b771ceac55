"""The task coordinator: one replica that moves async tasks from the object store
to the family deployments and makes sure each one ends.

Three independent loops, so that no one of them can stall the others:

* **dispatch** (every ``poll_seconds``, and at once when the ingress kicks it)
  lists the queue markers of unfinished tasks and, with compare-and-swap
  updates, dispatches ``PENDING`` tasks through the family's
  ``DeploymentHandle`` (Serve's own routing), at most as many per family
  deployment as its running replicas take at once (``max_ongoing_requests``
  each): the rest waits in the store, where the next pick is fair across
  tenants (:mod:`ingress.tasks.fairness`) and the backlog is published to
  Serve's autoscaler (:mod:`deployments.autoscaling`); a full deployment leaves
  the task ``PENDING``; re-dispatches a task whose worker is gone, up to
  ``max_attempts``, then fails it ("quarantined"); fails a task the job itself
  failed on without retrying it; and fails every task past its deadline
  (``Timeout``), running or not.
* **webhooks** delivers the outbox with bounded concurrency overall and per
  tenant, exponential backoff, and a dead letter after the last try; a slow or
  silent receiver holds only its own slots.
* **retention** deletes records and files past the retention.

Leases are judged on this replica's clock only: a holder is presumed lost when
its record's ``lease_seq`` has not changed for ``lease_seconds`` as observed
here (see :mod:`deployments.tasks` for the worker's side). Nothing that matters
lives only in memory: a restarted coordinator picks up from the store (and
waits one lease period before presuming any holder lost).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from typing import Any

from deployments.autoscaling import publish_queue_depth
from deployments.errors import new_incident
from deployments.metrics import STUDIO_METRICS
from deployments.replica import prepare_replica
from deployments.types import TaskRef
from ingress.dispatch import classify_ray_error, family_call
from ingress.inputs import FetchLimits
from ingress.jobs import webhook_fingerprint
from ingress.tasks.fairness import FairShare
from ingress.tasks.quotas import Refusal, TenantQuotas
from ingress.tasks.service import task_envelope
from ingress.wiring.settings import IngressSettings
from storage.base import ObjectNotFound, ObjectStore, PreconditionFailed
from storage.factory import open_store
from storage.settings import StorageSettings
from storage.tasks import (
    OUTBOX_PREFIX,
    QueueEntry,
    TaskRecord,
    TaskStore,
    dead_letter_key,
    parse_outbox_key,
    task_created_at,
)

log = logging.getLogger(__name__)

DISPATCH_LEASE_SECONDS = 60.0  # time a dispatched task may wait before a worker claims it
ORPHAN_MARKER_SECONDS = 60.0
REPLICA_REFRESH_SECONDS = 2.0  # how often the running replicas per deployment are read from Serve
RETENTION_SWEEP_SECONDS = 600.0
LOCK_PRUNE_AGE_SECONDS = 3600.0


class TaskCoordinator:
    """Plain class; ``ingress.wiring.builder`` binds it as a one-replica deployment."""

    def __init__(self, handles: dict[str, Any], deployments: dict[str, dict[str, Any]] | None = None, *,
                 start_loop: bool = True):
        """``deployments``: per family deployment, its ``family``, ``gpu`` and ``max_ongoing_requests``."""
        prepare_replica()
        self.settings = IngressSettings()
        storage = StorageSettings()
        self.handles = handles
        self.store: ObjectStore = open_store(storage)
        self.tasks = TaskStore(self.store)
        self.url_expiry = storage.url_expiry_seconds
        s = self.settings
        self.limits = FetchLimits(
            max_bytes=s.fetch_max_bytes, timeout_seconds=s.fetch_timeout_seconds, allow_loopback=s.allow_loopback_inputs
        )
        self.inflight: dict[str, asyncio.Task] = {}
        self._inflight_deployment: dict[str, str] = {}
        # A deployment that answered "full" gets no new attempts until this time.
        self._full_until: dict[str, float] = {}
        # task_id -> ((attempts, lease_seq), monotonic time first seen): leases on one clock.
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}
        self._clock = time.monotonic  # the one clock leases are judged on
        self._timing_out: set[str] = set()
        self._webhooks: dict[str, asyncio.Task] = {}  # outbox key -> delivery
        self._webhook_tenant: dict[str, str] = {}
        self._webhook_not_before: dict[str, float] = {}
        self._background: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._start_loop = start_loop
        self._loops: dict[str, asyncio.Task] = {}
        self.deployments = deployments or {}
        self.fair = FairShare(lambda tenant: self.settings.quota(tenant).weight)
        self.quotas = TenantQuotas(lambda tenant: self.settings.quota(tenant), time.time)
        self._replicas: dict[str, int] = {}
        self._replicas_at = -float("inf")
        self._backlog: dict[str, int] = {}  # deployment -> tasks waiting in the store at the last scan

    def _ensure_loop(self) -> None:
        """Start the loops on the replica's event loop (first call, or after one crashed)."""
        if not self._start_loop:
            return
        for name, body in (("dispatch", self._dispatch_loop), ("webhooks", self._webhook_loop),
                           ("retention", self._retention_loop)):
            task = self._loops.get(name)
            if task is None or task.done():
                self._loops[name] = asyncio.get_running_loop().create_task(body(), name=f"coordinator-{name}")

    # -- public methods (called through the handle) -------------------------
    async def kick(self, tenant: str, task_id: str, deployment: str) -> None:
        """A new task was written: dispatch it now if nothing waits before it, else
        scan now (the scan picks fairly among everything waiting)."""
        self._ensure_loop()
        if not self._backlog.get(deployment) and self._has_room(deployment):
            self._start(tenant, task_id, deployment)
        else:
            self._wake.set()

    async def admit(self, tenant: str, costs: dict[str, int], task: bool = False) -> Refusal | None:
        """Count a request costing ``costs`` (per rate) against ``tenant``'s quotas
        (:mod:`ingress.tasks.quotas`), or refuse it."""
        self._ensure_loop()
        refusal = self.quotas.admit(tenant, costs, task)
        if refusal is not None:
            STUDIO_METRICS.quota_rejection(tenant, refusal.quota)
        return refusal

    async def charge(self, tenant: str, rate: str, amount: int) -> None:
        """Settle a cost known after the work (a PDF's pages, a chat's real token usage)."""
        self.quotas.charge(tenant, rate, amount)

    async def has_webhook_secret(self, tenant: str) -> bool:
        """Whether ``tenant`` has a webhook signing secret (the coordinator holds them; the ingress asks)."""
        return self.settings.webhook_secret(tenant) is not None

    async def check_health(self) -> None:
        """Serve calls this every few seconds; it also (re)starts the loops."""
        self._ensure_loop()

    # -- loops ----------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        await self._repeat("coordinator tick", self.tick, self.settings.coordinator_poll_seconds, self._wake)

    async def _webhook_loop(self) -> None:
        await self._repeat("webhook scan", self.webhook_scan, self.settings.coordinator_poll_seconds)

    async def _retention_loop(self) -> None:
        sweep = lambda: asyncio.to_thread(self.sweep_expired)  # noqa: E731
        await self._repeat("retention sweep", sweep, RETENTION_SWEEP_SECONDS)

    @staticmethod
    async def _repeat(what: str, step, period: float, wake: asyncio.Event | None = None) -> None:
        """Run ``step`` every ``period`` seconds (sooner when ``wake`` is set), forever;
        a failed step is logged and the next one runs on time."""
        while True:
            try:
                await step()
            except Exception:
                log.exception("%s failed", what)
            if wake is None:
                await asyncio.sleep(period)
                continue
            try:
                await asyncio.wait_for(wake.wait(), period)
            except TimeoutError:
                pass
            wake.clear()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def tick(self) -> None:
        """One scan of the unfinished tasks: time out the late ones, dispatch the rest in
        fair order while their deployments have room, publish the backlog."""
        listed_at = time.time()
        queued = await asyncio.to_thread(self.tasks.queued)
        await self._refresh_replicas()
        now = time.time()
        live: set[str] = set()
        waiting: dict[str, list[QueueEntry]] = {}
        markers: dict[str, tuple[str, float]] = {}
        unfinished: Counter[str] = Counter()
        for info, entry in queued:
            live.add(entry.task_id)
            unfinished[entry.tenant] += 1
            if entry.deadline_at is not None and now > entry.deadline_at:
                if entry.task_id not in self._timing_out:
                    self._timing_out.add(entry.task_id)
                    self._spawn(self._time_out(entry.tenant, entry.task_id, info.key, now - info.last_modified))
                continue
            if entry.task_id in self.inflight:
                continue
            waiting.setdefault(entry.deployment, []).append(entry)
            markers[entry.task_id] = (info.key, now - info.last_modified)
        self.quotas.scanned(unfinished, listed_at)
        for deployment, entries in waiting.items():
            for entry in self.fair.pick(deployment, entries, self._room(deployment)):
                key, age = markers[entry.task_id]
                self._start(entry.tenant, entry.task_id, deployment, marker=key, marker_age=age)
        self._backlog = {d: sum(1 for e in entries if e.task_id not in self.inflight) for d, entries in waiting.items()}
        for task_id in set(self._seen) - live:
            self._seen.pop(task_id, None)
        self._timing_out &= live
        await self._publish(queued)

    async def _publish(self, queued: list[tuple[Any, QueueEntry]]) -> None:
        """The backlog per deployment to Serve's autoscaler, and the task gauges."""
        depths = {d: self._backlog.get(d, 0) for d in set(self.deployments) | set(self._backlog)}
        try:
            await asyncio.to_thread(publish_queue_depth, depths)
        except Exception:
            log.warning("could not publish the queue depth", exc_info=True)
        STUDIO_METRICS.task_gauges(queued, set(self.inflight), self.deployments, depths)

    async def _refresh_replicas(self) -> None:
        """Running replicas per family deployment, from Serve's status (every few seconds)."""
        if time.monotonic() - self._replicas_at < REPLICA_REFRESH_SECONDS or not self.deployments:
            return
        self._replicas_at = time.monotonic()
        try:
            self._replicas = await asyncio.to_thread(_running_replicas, set(self.deployments))
        except Exception:
            log.debug("replica counts unavailable; keeping the last ones", exc_info=True)

    def _room(self, deployment: str) -> int:
        """Attempts ``deployment`` may get now: what its running replicas take at once
        (one replica's worth while it scales from zero, so Serve sees the demand), minus
        those in flight; none right after it answered "full"."""
        if self._full_until.get(deployment, 0) > time.time():
            return 0
        per_replica = int(self.deployments.get(deployment, {}).get("max_ongoing_requests", 1))
        capacity = max(1, self._replicas.get(deployment, 1)) * per_replica
        in_flight = sum(1 for d in self._inflight_deployment.values() if d == deployment)
        return max(0, capacity - in_flight)

    def _has_room(self, deployment: str) -> bool:
        return self._room(deployment) > 0

    def _start(self, tenant: str, task_id: str, deployment: str, marker: str | None = None,
               marker_age: float = 0.0) -> None:
        if task_id in self.inflight:
            return
        task = asyncio.create_task(self._drive(tenant, task_id, marker, marker_age))
        self.inflight[task_id] = task
        self._inflight_deployment[task_id] = deployment

        def done(_):
            self.inflight.pop(task_id, None)
            self._inflight_deployment.pop(task_id, None)

        task.add_done_callback(done)

    # -- one task -----------------------------------------------------------
    async def _drive(self, tenant: str, task_id: str, marker: str | None, marker_age: float) -> None:
        """Dispatch ``task_id`` if it needs it, await the worker, retry while it dies."""
        try:
            while True:
                attempt, record = await asyncio.to_thread(self._take_attempt, tenant, task_id)
                if record is None:
                    if marker is not None and marker_age > ORPHAN_MARKER_SECONDS:
                        await asyncio.to_thread(self.store.delete, marker)  # its submit died before the record
                    return
                if record.terminal:
                    await asyncio.to_thread(self.tasks.settle, record)
                    return
                if attempt is None:
                    return  # held by a live worker (or dispatch): look again next scan
                if not await self._run_attempt(record, attempt):
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("driving task %s failed; the next scan retries", task_id)

    def _lapsed(self, r: TaskRecord) -> bool:
        """Whether the holder of ``r``'s lease is presumed lost: nobody holds it, or its
        ``lease_seq`` has stood still for ``lease_seconds`` on this replica's clock."""
        if r.lease_owner is None:
            return True
        version = (r.attempts, r.lease_seq)
        now = self._clock()
        seen = self._seen.get(r.task_id)
        if seen is None or seen[0] != version:
            self._seen[r.task_id] = (version, now)
            return False
        return now - seen[1] >= (r.lease_seconds or 0.0)

    def _take_attempt(self, tenant: str, task_id: str) -> tuple[int | None, TaskRecord | None]:
        """Claim the next attempt of a task that needs one (CAS). Returns (attempt, record)."""

        def change(r: TaskRecord):
            if r.terminal or not self._lapsed(r):
                return False
            if r.cancel_requested:
                r.move("REVOKED", "cancelled" + (" (its worker was lost)" if r.status == "STARTED" else ""))
                return None
            if r.runs >= r.max_attempts:
                r.fail("WorkerLost", f"quarantined after {r.runs} attempts: each time its worker was lost "
                       "or could not reach the object store")
                return None
            if r.status == "STARTED":
                r.move("PENDING", f"worker {r.lease_owner} lost on attempt {r.attempts}; retrying")
            r.attempts += 1
            r.hold_lease("dispatch", DISPATCH_LEASE_SECONDS)
            return None

        record, written = self.tasks.apply(tenant, task_id, change)
        if written:
            self._ended(record)  # revoked or quarantined here
        taken = written and record is not None and not record.terminal
        return (record.attempts if taken and record is not None else None), record

    async def _run_attempt(self, record: TaskRecord, attempt: int) -> bool:
        """Send one attempt to its family; True means "take another attempt now"."""
        tenant, task_id = record.tenant, record.task_id
        ref = TaskRef(tenant=tenant, task_id=task_id, attempt=attempt,
                      lease_seconds=self.settings.task_lease_seconds, renew_seconds=self.settings.task_renew_seconds)
        handle = family_call(self.handles[record.deployment], record.input.get("lora_model"))
        try:
            outcome = await handle.run_task.remote(ref)
            log.info("task %s attempt %d: %s", task_id, attempt, outcome)
            return False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            kind = classify_ray_error(exc)
            if kind == "overloaded":
                # Full: leave the task PENDING in the store and stop offering this
                # deployment work until the next scan (bounded work per scan).
                self._full_until[record.deployment] = time.time() + self.settings.coordinator_poll_seconds * 0.9
                await asyncio.to_thread(self._give_back, tenant, task_id, attempt)
                return False
            if kind in ("error", "job"):  # run_task records a job's own failure itself; this is a bug
                incident = new_incident()
                log.error("task %s attempt %d failed on its worker (incident %s): %r", task_id, attempt, incident,
                          getattr(exc, "cause", exc))
                await asyncio.to_thread(self._finish_failed, record, attempt, "InternalError",
                                        f"the task failed on its worker (incident {incident})")
                return False
            log.warning("task %s attempt %d: worker %s (%s)", task_id, attempt,
                        "died" if kind == "dead" else "unreachable", type(exc).__name__)
            again = await asyncio.to_thread(self._after_lost_call, tenant, task_id, attempt, kind == "dead")
            if not again:  # give the deployment a scan to notice what broke before offering it more
                self._full_until[record.deployment] = time.time() + self.settings.coordinator_poll_seconds * 0.9
            return again

    @staticmethod
    def _ended(record: TaskRecord | None) -> None:
        """Count a task this replica moved to a terminal state."""
        if record is not None and record.terminal:
            STUDIO_METRICS.task_result(record.app_id, record.family, record.gpu, record.tenant, record.status,
                                       record.error)

    def _finish_failed(self, record: TaskRecord, attempt: int, error: str, message: str) -> None:
        def change(r: TaskRecord):
            if r.terminal or r.attempts != attempt:
                return False
            r.fail(error, message)
            return None

        updated, written = self.tasks.apply(record.tenant, record.task_id, change)
        if written:
            self._ended(updated)
        if updated is not None and updated.terminal:
            self.tasks.settle(updated)

    def _give_back(self, tenant: str, task_id: str, attempt: int) -> None:
        """The family was full: the attempt never reached a worker and does not count (its
        number is not reused); the task stays PENDING for a later scan."""

        def change(r: TaskRecord):
            if r.status != "PENDING" or r.attempts != attempt or r.lease_owner != "dispatch":
                return False
            r.unclaimed += 1
            r.release_lease()
            return None

        self.tasks.update(tenant, task_id, change)

    def _after_lost_call(self, tenant: str, task_id: str, attempt: int, dead: bool) -> bool:
        """The call running ``attempt`` broke. If no worker claimed it, it does not count and
        the task waits for the next scan; a late claim of it is refused, because the next
        dispatch takes a new number. If its worker is known dead, release the lease so the
        next attempt goes now (True). Otherwise the worker may still be running: its lease
        decides, on this replica's clock."""

        def change(r: TaskRecord):
            if r.terminal or r.attempts != attempt:
                return False
            if r.status == "PENDING" and r.lease_owner == "dispatch":
                r.unclaimed += 1
                r.release_lease()
                return None
            if r.status != "STARTED" or not dead or r.lease_owner in (None, "dispatch"):
                return False
            r.release_lease()
            return None

        record, written = self.tasks.apply(tenant, task_id, change)
        return written and record is not None and record.status == "STARTED"

    async def _time_out(self, tenant: str, task_id: str, marker: str, marker_age: float) -> None:
        """The task's marker says it is past its deadline: FAILURE/Timeout, and stop waiting
        for its worker (which sees the task is no longer its own at its next renewal and
        stops). A marker whose task is already settled goes too, and so does one whose
        record never came (its submit died) once it is older than a submit can take."""
        try:
            record, changed = await asyncio.to_thread(self.time_out, tenant, task_id)
            running = self.inflight.get(task_id)
            if running is not None and changed:
                running.cancel()
            if record is not None and record.terminal and not changed:
                await asyncio.to_thread(self.tasks.settle, record)  # its writer died before settling
            if (record is not None and record.terminal) or (record is None and marker_age > ORPHAN_MARKER_SECONDS):
                await asyncio.to_thread(self.store.delete, marker)
            if changed and record is not None:
                log.info("task %s: %s", task_id, record.error_data)
        except Exception:
            log.exception("timing out task %s failed; the next scan retries", task_id)
        finally:
            self._timing_out.discard(task_id)

    def time_out(self, tenant: str, task_id: str, force: bool = False) -> tuple[TaskRecord | None, bool]:
        """Fail an unfinished task past its deadline (or any, with ``force``) with ``Timeout``
        (CAS) and settle it. Returns ``(record, changed)``."""

        def change(r: TaskRecord):
            if r.terminal or not (force or r.deadline_at is None or time.time() >= r.deadline_at):
                return False
            limit = round((r.deadline_at or r.created_at) - task_created_at(r.task_id))
            r.fail("Timeout", f"the task did not finish within its deadline of {limit} s")
            return None

        record, changed = self.tasks.apply(tenant, task_id, change)
        if changed and record is not None:
            self._ended(record)
            self.tasks.settle(record)
        return record, changed

    # -- webhooks -----------------------------------------------------------
    async def webhook_scan(self) -> int:
        """Start deliveries of due outbox entries, within the overall and per-tenant caps.
        Returns how many were started; each runs on its own, never awaited here."""
        s = self.settings
        now = time.time()
        started = 0
        listed = await asyncio.to_thread(self.store.list, OUTBOX_PREFIX)
        present = {info.key for info in listed}
        for key in set(self._webhook_not_before) - present:
            self._webhook_not_before.pop(key, None)
        for info in listed:
            if len(self._webhooks) >= s.webhook_concurrency:
                break
            key = info.key
            parsed = parse_outbox_key(key)
            if parsed is None or key in self._webhooks or self._webhook_not_before.get(key, 0) > now:
                continue
            tenant = parsed[1]
            if sum(1 for t in self._webhook_tenant.values() if t == tenant) >= s.webhook_tenant_concurrency:
                continue
            task = asyncio.create_task(self._deliver_one(key, tenant))
            self._webhooks[key] = task
            self._webhook_tenant[key] = tenant

            def done(_, key=key):
                self._webhooks.pop(key, None)
                self._webhook_tenant.pop(key, None)

            task.add_done_callback(done)
            started += 1
        return started

    async def _deliver_one(self, key: str, tenant: str) -> None:
        try:
            await self._deliver(key, tenant)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook delivery of %s failed; the next scan retries", key)

    async def _deliver(self, key: str, tenant: str) -> None:
        from ingress.tasks.webhooks import WebhookPolicy, deliver, next_delay, sign_headers

        s = self.settings
        policy = WebhookPolicy(
            max_attempts=s.webhook_max_attempts, base_delay_seconds=s.webhook_base_delay_seconds,
            max_delay_seconds=s.webhook_max_delay_seconds,
        )
        try:
            raw, etag = await asyncio.to_thread(self.store.get_versioned, key)
            entry = json.loads(raw)
        except (ObjectNotFound, ValueError):
            self._webhook_not_before.pop(key, None)
            return
        if entry.get("next_at", 0) > time.time():
            self._webhook_not_before[key] = entry["next_at"]
            return
        record = await asyncio.to_thread(self.tasks.get, tenant, entry.get("task_id", ""))
        secret = self.settings.webhook_secret(tenant)
        if record is None or not entry.get("url") or secret is None:
            await asyncio.to_thread(self.store.delete, key)
            return
        env = await asyncio.to_thread(task_envelope, record, self.store, self.url_expiry)
        body = env.model_dump_json().encode()
        headers = sign_headers(secret, f"msg_{record.task_id}", body)
        result = await deliver(entry["url"], body, headers, policy, self.limits)
        entry["attempts"] = entry.get("attempts", 0) + 1
        entry["last"] = {"status": result.status, "error": result.error, "at": time.time()}
        outcome = "ok" if result.ok else "retry" if result.retryable and entry["attempts"] < policy.max_attempts else "dead"
        STUDIO_METRICS.webhook(tenant, outcome)
        if result.ok:
            await asyncio.to_thread(self.store.delete, key)
            self._webhook_not_before.pop(key, None)
        elif result.retryable and entry["attempts"] < policy.max_attempts:
            entry["next_at"] = time.time() + next_delay(policy, entry["attempts"])
            self._webhook_not_before[key] = entry["next_at"]
            try:
                await asyncio.to_thread(self.store.put_if, key, json.dumps(entry).encode(), if_match=etag)
            except PreconditionFailed:
                pass
        else:
            entry["url"] = webhook_fingerprint(entry["url"])  # a dead letter keeps no capability
            dead = {"entry": entry, "envelope": json.loads(body)}
            log.warning("webhook for task %s dead-lettered after %d attempts", record.task_id, entry["attempts"])
            await asyncio.to_thread(
                self.store.put, dead_letter_key(record.tenant, record.task_id), json.dumps(dead).encode(),
                "application/json",
            )
            await asyncio.to_thread(self.store.delete, key)
            self._webhook_not_before.pop(key, None)

    # -- retention ----------------------------------------------------------
    def sweep_expired(self) -> int:
        """Delete tenant objects older than the retention. A task record goes only once it
        is terminal (terminal records are never written again, so the delete cannot undo
        a concurrent change); an unfinished one is failed with ``Timeout`` first, through
        its compare-and-swap, and deleted by a later sweep."""
        cutoff = time.time() - self.settings.retention_seconds
        removed = 0
        for info in self.store.list("tenants/"):
            if info.last_modified >= cutoff:
                continue
            parts = info.key.split("/")
            if len(parts) == 5 and parts[2] == "tasks" and parts[4] == "record.json":
                record = self.tasks.get(parts[1], parts[3])
                if record is not None and not record.terminal:
                    # Through its CAS first (its worker stops, its webhook goes out); the record,
                    # now rewritten, is deleted by a sweep once it is past the retention again.
                    self.time_out(parts[1], parts[3], force=True)
                    continue
            self.store.delete(info.key)
            removed += 1
        prune = getattr(self.store, "prune_locks", None)
        if prune is not None:
            prune(LOCK_PRUNE_AGE_SECONDS)
        if removed:
            log.info("retention: deleted %d objects", removed)
        return removed


def _running_replicas(names: set[str]) -> dict[str, int]:
    """Running replicas of the named deployments of the ``studio`` application (blocking)."""
    from ray import serve
    from ray.serve._private.common import ReplicaState

    counts: dict[str, int] = {}
    for app in serve.status().applications.values():
        for name, dep in app.deployments.items():
            if name in names:
                counts[name] = int(dep.replica_states.get(ReplicaState.RUNNING, 0))
    return counts
