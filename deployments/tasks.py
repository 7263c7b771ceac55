"""The worker's side of an async task: claim it, hold a lease, report progress,
notice cancellation, and write the outcome — all through compare-and-swap
updates of the task record.

Only the worker that claims attempt *n* (``PENDING`` with ``attempts == n``)
runs it; the coordinator issues attempt *n+1* only after the lease of attempt *n*
expired, and a worker that finds its attempt superseded stops at the next
denoising step without writing anything. So a task never runs twice at once.
"""

from __future__ import annotations

import logging
import threading
import time

from deployments.errors import TaskStopped
from deployments.types import GeneratedImage, TaskRef
from storage.tasks import TaskRecord, TaskStore

log = logging.getLogger(__name__)


class TaskLease:
    """One worker's hold on one attempt of a task."""

    def __init__(self, tasks: TaskStore, ref: TaskRef, owner: str):
        self.tasks = tasks
        self.ref = ref
        self.owner = owner
        self.progress = 0.0
        self.stop_reason: str | None = None
        self._written_progress = -1.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _mine(self, r: TaskRecord) -> bool:
        return r.status == "STARTED" and r.attempts == self.ref.attempt and r.lease_owner == self.owner

    def claim(self) -> bool:
        """PENDING attempt n → STARTED under our lease. False: not ours to run (revoked,
        superseded, already finished); a cancelled task is marked REVOKED here."""
        won = False

        def change(r: TaskRecord):
            nonlocal won
            if r.status != "PENDING" or r.attempts != self.ref.attempt:
                return False
            if r.cancel_requested:
                r.move("REVOKED", "cancelled before it started")
                return None
            r.lease_owner = self.owner
            r.lease_expires_at = time.time() + self.ref.lease_seconds
            r.move("STARTED", f"attempt {r.attempts} on {self.owner}")
            won = True
            return None

        record = self.tasks.update(self.ref.tenant, self.ref.task_id, change)
        if record is not None and record.status == "REVOKED" and not won:
            self.tasks.settle(record)
        return won

    # -- lease renewal ----------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.ref.task_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ref.renew_seconds):
            try:
                self.renew()
            except Exception:  # a store hiccup: try again next tick; the lease has slack
                log.warning("lease renewal failed for %s", self.ref.task_id, exc_info=True)

    def renew(self) -> None:
        """Extend the lease, publish progress, and pick up cancellation."""

        def change(r: TaskRecord):
            if not self._mine(r):
                self.stop_reason = "revoked" if r.status == "REVOKED" else "lost"
                return False
            if r.cancel_requested:
                self.stop_reason = "revoked"
            r.lease_expires_at = time.time() + self.ref.lease_seconds
            r.progress = round(self.progress, 4)
            return None

        self.tasks.update(self.ref.tenant, self.ref.task_id, change)
        self._written_progress = self.progress

    def on_step(self, step: int, total: int) -> None:
        """Denoising-step callback: record progress; stop here if cancelled or superseded."""
        self.progress = min(step / max(total, 1), 0.99)
        if self.stop_reason is not None:
            raise TaskStopped(self.stop_reason)

    def check(self) -> None:
        if self.stop_reason is not None:
            raise TaskStopped(self.stop_reason)

    # -- outcome ----------------------------------------------------------
    def _finish(self, apply) -> TaskRecord | None:
        def change(r: TaskRecord):
            if not self._mine(r):
                return False
            apply(r)
            return None

        record = self.tasks.update(self.ref.tenant, self.ref.task_id, change)
        if record is not None and record.terminal:
            self.tasks.settle(record)
        return record

    def succeed(self, images: list[GeneratedImage]) -> None:
        def apply(r: TaskRecord):
            r.output_keys = [i.key for i in images]
            r.seeds = [i.seed for i in images]
            if images:
                r.width, r.height = images[0].width, images[0].height
            r.move("SUCCESS")

        self._finish(apply)

    def fail(self, error: str, error_data: str) -> None:
        self._finish(lambda r: r.fail(error, error_data))

    def revoked(self) -> None:
        """Cancelled while running: REVOKED (a lost lease writes nothing)."""
        if self.stop_reason == "revoked":
            self._finish(lambda r: r.move("REVOKED", "cancelled while running"))
