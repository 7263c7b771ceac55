"""Task records: creation, compare-and-swap updates, queue markers, settling."""

import pytest

from storage.factory import open_store
from storage.settings import StorageSettings
from storage.tasks import TaskRecord, TaskStore, new_task_id, parse_queue_key, queue_key


@pytest.fixture
def tasks(tmp_path):
    return TaskStore(open_store(StorageSettings(backend="local", local_root=tmp_path)))


def record(task_id, **kw):
    return TaskRecord(task_id=task_id, tenant="acme", app_id="ap", route="getTextToImage", family="sd15",
                      gpu="a10g", **kw)


def test_create_get_and_reference(tasks):
    tid = new_task_id()
    tasks.create(record(tid, reference_id="order/17 é"), {"app_id": "ap", "image": "https://x/y?sig=1"})
    got = tasks.get("acme", tid)
    assert got.status == "PENDING" and [h.status for h in got.history] == ["PENDING"]
    assert tasks.find_by_reference("acme", "order/17 é") == tid
    assert tasks.request("acme", tid)["image"] == "https://x/y?sig=1"
    assert tasks.get("other", tid) is None
    assert [q for _, q in tasks.queued()] == [(tid, "acme", "sd15-a10g")]


def test_task_ids_sort_in_creation_order():
    ids = [new_task_id() for _ in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50


def test_update_is_compare_and_swap(tasks):
    tid = new_task_id()
    tasks.create(record(tid), {})
    tasks.update("acme", tid, lambda r: setattr(r, "progress", 0.5))
    assert tasks.get("acme", tid).progress == 0.5
    assert tasks.update("acme", tid, lambda r: False).progress == 0.5
    assert tasks.update("acme", "0" * 32, lambda r: None) is None


def test_settle_drops_marker_and_request_and_queues_webhook(tasks):
    tid = new_task_id()
    tasks.create(record(tid, webhook=True), {"webhook": "https://hooks.example/x"})
    done = tasks.update("acme", tid, lambda r: r.move("SUCCESS"))
    tasks.settle(done)
    assert tasks.queued() == [] and tasks.request("acme", tid) is None
    assert tasks.store.exists(f"outbox/{tid}.json")
    assert done.progress == 1.0 and done.finished_at is not None


def test_idempotency_binding(tasks):
    assert tasks.claim_idempotency_key("acme", "k", "h1", "t1") is None
    assert tasks.claim_idempotency_key("acme", "k", "h2", "t2")["task_id"] == "t1"
    assert tasks.claim_idempotency_key("other", "k", "h2", "t3") is None


def test_queue_keys_round_trip():
    assert parse_queue_key(queue_key("abc", "acme", "sd15-a10g")) == ("abc", "acme", "sd15-a10g")
    assert parse_queue_key("queue/garbage") is None
