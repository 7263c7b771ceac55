"""The worker's side of async tasks: one claim per attempt, progress, cancellation, a
lease that fences itself, per-attempt outputs that only the live attempt publishes,
and job errors that end the task instead of killing the worker."""

import asyncio
import threading
import time

import pytest
from PIL import Image

from deployments.errors import TaskStopped
from deployments.families.diffusion import DiffusionFamily
from deployments.tasks import TaskLease
from deployments.types import ImageJob, Output, TaskRef, job_to_payload
from storage.base import PreconditionFailed
from storage.factory import open_store
from storage.settings import StorageSettings
from storage.tasks import TaskRecord, TaskStore, new_task_id

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def tasks(tmp_path):
    return TaskStore(open_store(StorageSettings(backend="local", local_root=tmp_path, signing_secret="s")))


def dispatched(tasks, attempt=1, job=None, **kw):
    tid = new_task_id()
    data, images = job_to_payload(job) if job is not None else ({}, {})
    if job is not None:
        data["request_id"] = tid
    tasks.create(TaskRecord(task_id=tid, tenant="t", app_id="a", route="getTextToImage", family="f", gpu="g", deployment="f-g", **kw),
                 data, images)
    tasks.update("t", tid, lambda r: (setattr(r, "attempts", attempt), r.hold_lease("dispatch", 60)))
    return tid


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


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
    seq = tasks.get("t", tid).lease_seq
    lease.on_step(5, 10)
    lease.renew()
    record = tasks.get("t", tid)
    assert record.progress == 0.5 and record.lease_seq == seq + 1
    assert lease.succeed([Output(key="tenants/t/images/x/1/0.png", content_type="image/png")], {"seeds": [7]})
    final = tasks.get("t", tid)
    assert final.status == "SUCCESS" and final.output_meta["seeds"] == [7] and final.progress == 1.0
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
    assert not lease.succeed([])
    assert tasks.get("t", tid).status == "PENDING"


def test_a_worker_that_cannot_renew_stops_before_its_lease_could_lapse(tasks, monkeypatch):
    tid = dispatched(tasks)
    lease_seconds = 1.0
    lease = TaskLease(tasks, TaskRef("t", tid, 1, lease_seconds=lease_seconds, renew_seconds=0.05), "w1")
    assert lease.claim()
    claimed = time.monotonic()

    def store_down(*args, **kwargs):
        raise ConnectionError("object store unreachable")

    monkeypatch.setattr(tasks, "apply", store_down)
    lease.start()
    try:
        lease.on_step(1, 10)  # fine while the lease is fresh
        wait_until(lambda: lease.stop_reason == "lost", timeout=5)
        # It gave up within the fence (0.75 of the lease), before anyone could presume it lost.
        assert time.monotonic() - claimed < lease_seconds
        with pytest.raises(TaskStopped):
            lease.on_step(2, 10)
    finally:
        lease.stop()
        monkeypatch.undo()
    assert tasks.get("t", tid).status == "STARTED"  # it wrote nothing; the coordinator retries it


def test_claim_and_finish_report_what_was_actually_written(tasks, monkeypatch):
    """A competing write between a read and the compare-and-swap makes the change run again
    on the new record: what the worker reports must be that second outcome."""
    real_put_if = tasks.store.put_if

    def race_once(competing):
        fired = []

        def put_if(key, data, *args, **kwargs):
            if not fired and key.endswith("record.json") and kwargs.get("if_match"):
                fired.append(True)
                tasks.update("t", tid, competing)  # lands between the worker's read and its write
            return real_put_if(key, data, *args, **kwargs)

        monkeypatch.setattr(tasks.store, "put_if", put_if)

    tid = dispatched(tasks)
    race_once(lambda r: setattr(r, "cancel_requested", True))  # a cancel arrives mid-claim
    lease = TaskLease(tasks, TaskRef("t", tid, 1), "w1")
    assert not lease.claim()
    assert tasks.get("t", tid).status == "REVOKED"

    tid = dispatched(tasks)
    monkeypatch.setattr(tasks.store, "put_if", real_put_if)
    lease = TaskLease(tasks, TaskRef("t", tid, 1), "w1")
    assert lease.claim()
    race_once(lambda r: r.fail("Timeout", "past its deadline"))  # the deadline fires mid-finish
    assert not lease.succeed([Output(key="tenants/t/images/x/1/0.png", content_type="image/png")])
    final = tasks.get("t", tid)
    assert final.status == "FAILURE" and final.output_keys == []


def test_a_retried_write_that_had_landed_counts_as_written(tasks, monkeypatch):
    tid = dispatched(tasks)
    lease = TaskLease(tasks, TaskRef("t", tid, 1), "w1")
    real_put_if = tasks.store.put_if

    def lands_then_412(key, data, *args, **kwargs):  # the client library retried a write that landed
        etag = real_put_if(key, data, *args, **kwargs)
        if key.endswith("record.json") and kwargs.get("if_match"):
            raise PreconditionFailed(key)
        return etag

    monkeypatch.setattr(tasks.store, "put_if", lands_then_412)
    assert lease.claim()
    assert lease.succeed([Output(key="tenants/t/images/x/1/0.png", content_type="image/png")])
    assert tasks.get("t", tid).status == "SUCCESS"


# -- the family's run_task ----------------------------------------------------------


@pytest.fixture(scope="module")
def family(tiny_models, tmp_path_factory):
    store = open_store(StorageSettings(backend="local", local_root=tmp_path_factory.mktemp("objects"),
                                       signing_secret="s"))
    return DiffusionFamily(str(tiny_models["tiny-sd15"]), store=store, family="sd15", gpu="a10g")


def job(**kw) -> ImageJob:
    return ImageJob(task="text2img", tenant="t", request_id="x", prompt="p", num_inference_steps=2,
                    height=64, width=64, **kw)


def test_run_task_runs_the_job_stored_at_submit_with_per_attempt_outputs(family):
    src = Image.new("RGB", (64, 64), (10, 200, 30))
    tid = dispatched(family.tasks, job=ImageJob(task="img2img", tenant="t", request_id="x", prompt="p", image=src,
                                                num_inference_steps=2, strength=0.5, seed=3, batch=2), attempt=2)
    assert asyncio.run(family.run_task(TaskRef("t", tid, 2))) == "SUCCESS"
    record = family.tasks.get("t", tid)
    assert record.status == "SUCCESS" and record.output_meta["seeds"] == [3, 4]
    assert record.output_keys == [f"tenants/t/images/{tid}/2/0.png", f"tenants/t/images/{tid}/2/1.png"]
    for key in record.output_keys:
        assert family.store.get(key).startswith(b"\x89PNG")
    assert family.tasks.payload(record) is None  # the captured inputs went with the task


def test_a_superseded_attempt_cannot_change_a_finished_tasks_outputs(family, monkeypatch):
    tasks = family.tasks
    tid = dispatched(tasks, job=job(seed=1))
    release = threading.Event()
    real_generate = family.model.generate

    def slow_generate(j, on_step=None, lora_stack=None):
        assert release.wait(30)
        return real_generate(j, on_step=on_step, lora_stack=lora_stack)

    monkeypatch.setattr(family.model, "generate", slow_generate)

    async def scenario():
        # It renews rarely, so it does not notice before it has written its outputs.
        first = asyncio.create_task(family.run_task(TaskRef("t", tid, 1, lease_seconds=30, renew_seconds=30)))
        await asyncio.to_thread(wait_until, lambda: tasks.get("t", tid).status == "STARTED")
        # Its lease lapses as far as the coordinator can tell: attempt 2 goes out and wins.
        tasks.update("t", tid, lambda r: (r.move("PENDING", "lost"), setattr(r, "attempts", 2),
                                          r.hold_lease("dispatch", 60)))
        second = TaskLease(tasks, TaskRef("t", tid, 2), "w2")
        assert await asyncio.to_thread(second.claim)
        winner = Output(key=f"tenants/t/images/{tid}/2/0.png", content_type="image/png")
        tasks.store.put(winner.key, b"winner", "image/png")
        assert await asyncio.to_thread(second.succeed, [winner])
        release.set()  # now the late attempt finishes its job
        return await first

    assert asyncio.run(scenario()) == "superseded"
    final = tasks.get("t", tid)
    assert final.status == "SUCCESS" and final.output_keys == [f"tenants/t/images/{tid}/2/0.png"]
    assert tasks.store.get(final.output_keys[0]) == b"winner"
    assert not tasks.store.exists(f"tenants/t/images/{tid}/1/0.png")  # the late attempt left nothing


def test_an_error_the_job_raises_fails_the_task_with_a_reason(family, monkeypatch):
    tid = dispatched(family.tasks, job=job())

    def broken(j, on_step=None):
        raise RuntimeError("CUDA error at 0x7f3a11 in /opt/internal/kernel.cu")

    monkeypatch.setattr(family.model, "generate", broken)
    assert asyncio.run(family.run_task(TaskRef("t", tid, 1))) == "FAILURE"
    record = family.tasks.get("t", tid)
    assert record.status == "FAILURE" and record.error == "ModelError"
    assert "incident" in record.error_data and "0x7f3a11" not in record.error_data
    assert "RuntimeError" not in record.error_data


def test_a_store_failure_hands_the_task_back_after_a_backoff(family, monkeypatch):
    tid = dispatched(family.tasks, job=job())

    def store_down(*args, **kwargs):
        raise ConnectionError("object store unreachable")

    monkeypatch.setattr(family.store, "put", store_down)  # the upload of the outputs fails
    assert asyncio.run(family.run_task(TaskRef("t", tid, 1))) == "retry"
    record = family.tasks.get("t", tid)
    assert record.status == "PENDING" and record.lease_owner == "backoff" and record.lease_seconds == 5
    assert "object store" in record.history[-1].note


def test_a_bug_in_the_worker_or_a_lost_input_fails_the_task_without_retry(family, monkeypatch):
    tid = dispatched(family.tasks, job=job())
    monkeypatch.setattr(family, "_load_job", lambda record, attempt: (_ for _ in ()).throw(TypeError("bug")))
    assert asyncio.run(family.run_task(TaskRef("t", tid, 1))) == "FAILURE"
    record = family.tasks.get("t", tid)
    assert record.error == "InternalError" and "incident" in record.error_data and "bug" not in record.error_data
    monkeypatch.undo()

    src = Image.new("RGB", (64, 64))
    tid = dispatched(family.tasks, job=ImageJob(task="img2img", tenant="t", request_id="x", prompt="p", image=src,
                                                num_inference_steps=2, strength=0.5))
    family.store.delete(family.tasks.payload(family.tasks.get("t", tid))["inputs"]["image"])
    assert asyncio.run(family.run_task(TaskRef("t", tid, 1))) == "FAILURE"
    record = family.tasks.get("t", tid)
    assert record.error == "InternalError" and "input is gone" in record.error_data


def test_a_finish_that_landed_late_is_not_mistaken_for_a_lost_attempt(family, monkeypatch):
    """The final write's answer is lost but the write commits a moment later (S3 409 while
    it commits): the worker must not delete the outputs the record now publishes."""
    tasks = family.tasks
    tid = dispatched(tasks, job=job(seed=5))
    real_put_if = tasks.store.put_if
    pending = []

    def put_if(key, data, *args, **kwargs):
        if key.endswith("record.json") and b'"SUCCESS"' in data:
            if not pending:
                pending.append((key, data, args, kwargs))
                raise PreconditionFailed(key)  # answered "conflict" while it was still committing ...
            if pending[0] is not None:
                k, first, a, kw = pending[0]
                pending[0] = None
                real_put_if(k, first, *a, **kw)  # ... and it commits just before our retry
        return real_put_if(key, data, *args, **kwargs)

    monkeypatch.setattr(tasks.store, "put_if", put_if)
    assert asyncio.run(family.run_task(TaskRef("t", tid, 1))) == "SUCCESS"
    monkeypatch.undo()
    record = tasks.get("t", tid)
    assert record.status == "SUCCESS" and record.output_keys
    assert all(tasks.store.exists(k) for k in record.output_keys)
