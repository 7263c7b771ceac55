"""The worker's lease: one claim per attempt, progress, cancellation, outcomes."""

import pytest

from deployments.errors import TaskStopped
from deployments.tasks import TaskLease
from deployments.types import GeneratedImage, TaskRef
from storage.factory import open_store
from storage.settings import StorageSettings
from storage.tasks import TaskRecord, TaskStore, new_task_id


@pytest.fixture
def tasks(tmp_path):
    return TaskStore(open_store(StorageSettings(backend="local", local_root=tmp_path)))


def dispatched(tasks, attempt=1, **kw):
    tid = new_task_id()
    tasks.create(TaskRecord(task_id=tid, tenant="t", app_id="a", route="getTextToImage", family="f", gpu="g", **kw),
                 {})
    tasks.update("t", tid, lambda r: setattr(r, "attempts", attempt))
    return tid


def test_only_one_worker_claims_an_attempt(tasks):
    tid = dispatched(tasks)
    first = TaskLease(tasks, TaskRef("t", tid, 1), "w1")
    second = TaskLease(tasks, TaskRef("t", tid, 1), "w2")
    assert first.claim() and not second.claim()
    assert tasks.get("t", tid).lease_owner == "w1"
    stale = TaskLease(tasks, TaskRef("t", dispatched(tasks, attempt=2), 1), "w3")
    assert not stale.claim()


def test_progress_success_and_settle(tasks):
    tid = dispatched(tasks)
    lease = TaskLease(tasks, TaskRef("t", tid, 1), "w1")
    assert lease.claim()
    lease.on_step(5, 10)
    lease.renew()
    assert tasks.get("t", tid).progress == 0.5
    lease.succeed([GeneratedImage(key="tenants/t/images/x/0.png", seed=7, width=64, height=64)])
    final = tasks.get("t", tid)
    assert final.status == "SUCCESS" and final.seeds == [7] and final.progress == 1.0
    assert tasks.queued() == []


def test_cancel_stops_at_next_step(tasks):
    tid = dispatched(tasks)
    lease = TaskLease(tasks, TaskRef("t", tid, 1), "w1")
    assert lease.claim()
    tasks.update("t", tid, lambda r: setattr(r, "cancel_requested", True))
    lease.renew()
    with pytest.raises(TaskStopped):
        lease.on_step(1, 10)
    lease.revoked()
    assert tasks.get("t", tid).status == "REVOKED"


def test_cancelled_before_claim_is_revoked_and_never_started(tasks):
    tid = dispatched(tasks, cancel_requested=True)
    assert not TaskLease(tasks, TaskRef("t", tid, 1), "w1").claim()
    final = tasks.get("t", tid)
    assert final.status == "REVOKED" and "STARTED" not in [h.status for h in final.history]


def test_superseded_worker_writes_nothing(tasks):
    tid = dispatched(tasks)
    lease = TaskLease(tasks, TaskRef("t", tid, 1), "w1")
    assert lease.claim()
    tasks.update("t", tid, lambda r: (setattr(r, "attempts", 2), r.move("PENDING", "re-dispatched")))
    lease.renew()
    with pytest.raises(TaskStopped):
        lease.check()
    lease.succeed([])
    assert tasks.get("t", tid).status == "PENDING"
