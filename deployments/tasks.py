"""The worker's side of an async task: claim it, hold a lease, report progress,
notice cancellation, and write the outcome — all through compare-and-swap
updates of the task record.

Only the worker that claims attempt *n* (``PENDING`` with ``attempts == n``)
runs it. A lease is a promise, not a timestamp: every renewal bumps the
record's ``lease_seq``, and the coordinator presumes the holder lost only after
seeing the same ``lease_seq`` for ``lease_seconds`` on its own clock, so no two
machines' clocks are ever compared. The worker fences itself first: when its
last successful renewal is older than ``FENCE`` of the lease (by its own
monotonic clock, counted from before the write was sent, so always earlier than
anyone else can presume it lost), it stops at the next denoising step. Outputs
are written under per-attempt keys and published only by the final
compare-and-swap, which succeeds only while the record still names this
worker's attempt; a superseded worker deletes what it wrote. So a task never
runs twice at once, and a late worker cannot change a finished task's outputs.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from deployments.errors import TaskStopped
from deployments.types import Output, TaskRef
from storage.tasks import TaskRecord, TaskStore

log = logging.getLogger(__name__)

#: Fraction of the lease after the last successful renewal at which a worker stops itself.
FENCE = 0.75


class TaskLease:
    """One worker's hold on one attempt of a task."""

    def __init__(self, tasks: TaskStore, ref: TaskRef, owner: str):
        self.tasks = tasks
        self.ref = ref
        self.owner = owner
        self.record: TaskRecord | None = None  # as claimed, then as finished
        self.progress = 0.0
        self.stop_reason: str | None = None
        self._renewed_at = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _mine(self, r: TaskRecord) -> bool:
        return r.status == "STARTED" and r.attempts == self.ref.attempt and r.lease_owner == self.owner

    def claim(self) -> bool:
        """PENDING attempt n → STARTED under our lease. False: not ours to run (revoked,
        superseded, already finished); a cancelled task is marked REVOKED here."""
        sent = time.monotonic()

        def change(r: TaskRecord):
            if r.status != "PENDING" or r.attempts != self.ref.attempt:
                return False
            if r.cancel_requested:
                r.move("REVOKED", "cancelled before it started")
                return None
            r.hold_lease(self.owner, self.ref.lease_seconds)
            r.move("STARTED", f"attempt {r.attempts} on {self.owner}")
            return None

        record, written = self.tasks.apply(self.ref.tenant, self.ref.task_id, change)
        won = written and record is not None and self._mine(record)
        if written and record is not None and record.status == "REVOKED":
            self.tasks.settle(record)
        if won:
            self.record = record
            self._renewed_at = sent
        return won

    # -- lease renewal ----------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.ref.task_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing. Does not wait: the renewal thread may be inside a slow store call,
        and whatever it writes after this is refused by the record's checks."""
        self._stop.set()

    def _renew_loop(self) -> None:
        failures = 0
        while self.stop_reason is None and not self._stop.wait(self.ref.renew_seconds):
            try:
                self.renew()
                failures = 0
            except Exception:  # a store hiccup: try again next tick, until the fence
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning("lease renewal failed for %s (%d in a row)", self.ref.task_id, failures,
                                exc_info=failures == 1)
                self._fenced()

    def renew(self) -> None:
        """Extend the lease, publish progress, and pick up cancellation."""
        sent = time.monotonic()

        def change(r: TaskRecord):
            if not self._mine(r):
                self.stop_reason = "revoked" if r.status == "REVOKED" else "lost"
                return False
            if r.cancel_requested:
                self.stop_reason = "revoked"
            r.hold_lease(self.owner, self.ref.lease_seconds)
            r.progress = round(self.progress, 4)
            return None

        record, written = self.tasks.apply(self.ref.tenant, self.ref.task_id, change)
        if record is None:
            self.stop_reason = "lost"  # the record is gone (deleted past its retention)
        elif written and self.stop_reason is None:
            self._renewed_at = sent

    def _fenced(self) -> bool:
        """True (and stop_reason "lost") once our last renewal is older than the fence."""
        if self.stop_reason is None and time.monotonic() - self._renewed_at > FENCE * self.ref.lease_seconds:
            log.warning("task %s: lease not renewed for %.1f s; stopping this attempt", self.ref.task_id,
                        time.monotonic() - self._renewed_at)
            self.stop_reason = "lost"
        return self.stop_reason == "lost"

    def on_step(self, step: int, total: int) -> None:
        """Denoising-step callback: record progress; stop here if cancelled, superseded or fenced."""
        self.progress = min(step / max(total, 1), 0.99)
        self.check()

    def check(self) -> None:
        self._fenced()
        if self.stop_reason is not None:
            raise TaskStopped(self.stop_reason)

    # -- outcome ----------------------------------------------------------
    def _finish(self, apply) -> TaskRecord | None:
        """Apply a terminal change if the attempt is still ours; the record if written, else None."""

        def change(r: TaskRecord):
            if not self._mine(r):
                return False
            apply(r)
            return None

        record, written = self.tasks.apply(self.ref.tenant, self.ref.task_id, change)
        if not written or record is None:
            return None
        if record.terminal:
            self.tasks.settle(record)
        self.record = record
        return record

    def give_up(self, note: str) -> None:
        """This attempt failed for a reason outside the job that may pass (the object store):
        hand the task back, PENDING, under a backoff lease (5 s, doubling per attempt, at
        most 60 s) that the coordinator lets lapse before the next attempt. Best effort: if
        the store is down, this lease lapses instead."""
        backoff = min(60.0, 5.0 * 2 ** max(self.ref.attempt - 1, 0))

        def change(r: TaskRecord):
            if not self._mine(r):
                return False
            r.move("PENDING", note)
            r.hold_lease("backoff", backoff)
            return None

        self.stop_reason = self.stop_reason or "lost"
        try:
            self.tasks.apply(self.ref.tenant, self.ref.task_id, change)
        except Exception:
            log.warning("task %s: could not hand back attempt %d", self.ref.task_id, self.ref.attempt, exc_info=True)

    def succeed(self, outputs: list[Output], meta: dict[str, Any] | None = None) -> bool:
        """Publish the outputs (and the result's meta) in the final compare-and-swap. False:
        the attempt is no longer ours (superseded, revoked, timed out); the caller deletes
        its outputs."""

        def apply(r: TaskRecord):
            r.output_keys = [o.key for o in outputs]
            r.output_meta = dict(meta or {})
            r.move("SUCCESS")

        return self._finish(apply) is not None

    def fail(self, error: str, error_data: str) -> None:
        self._finish(lambda r: r.fail(error, error_data))

    def revoked(self) -> None:
        """Cancelled while running: REVOKED (a lost lease writes nothing)."""
        if self.stop_reason == "revoked":
            self._finish(lambda r: r.move("REVOKED", "cancelled while running"))
