"""Task records: creation, compare-and-swap updates, queue markers, settling."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from storage.base import PreconditionFailed
from storage.factory import open_store
from storage.settings import StorageSettings
from storage.tasks import (
    TaskRecord,
    TaskStore,
    new_task_id,
    outbox_key,
    parse_outbox_key,
    parse_queue_key,
    queue_key,
)


@pytest.fixture
def tasks(tmp_path):
    return TaskStore(open_store(StorageSettings(backend="local", local_root=tmp_path)))


def record(task_id, **kw):
    return TaskRecord(task_id=task_id, tenant="acme", app_id="ap", route="getTextToImage", family="sd15", deployment="sd15-a10g",
                      gpu="a10g", **kw)


def test_create_get_and_reference(tasks):
    tid = new_task_id()
    stored, created = tasks.create(record(tid, reference_id="order/17 é", deadline_at=2e9),
                                   {"prompt": "p"}, {"image": b"png-bytes"}, webhook="https://hooks.example/x")
    assert created and stored.payload_key.startswith(f"tenants/acme/tasks/{tid}/")
    got = tasks.get("acme", tid)
    assert got.status == "PENDING" and [h.status for h in got.history] == ["PENDING"]
    assert tasks.find_by_reference("acme", "order/17 é") == tid
    payload = tasks.payload(got)
    assert payload["job"] == {"prompt": "p"} and payload["webhook"] == "https://hooks.example/x"
    assert tasks.store.get(payload["inputs"]["image"]) == b"png-bytes"
    assert tasks.get("other", tid) is None
    assert [q for _, q in tasks.queued()] == [(tid, "acme", "sd15-a10g", 2e9, 5)]


def test_concurrent_creates_of_one_task_make_one_record_and_keep_the_winners_payload(tasks):
    tid = new_task_id()

    def create(i):
        return tasks.create(record(tid), {"n": i}, {"image": f"input-{i}".encode()})

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(create, range(6)))
    assert sum(created for _, created in results) == 1
    stored = tasks.get("acme", tid)
    assert {r.payload_key for r, _ in results} == {stored.payload_key}
    winner = tasks.payload(stored)
    assert tasks.store.get(winner["inputs"]["image"]) == f"input-{winner['job']['n']}".encode()
    payloads = [i.key for i in tasks.store.list(f"tenants/acme/tasks/{tid}/") if not i.key.endswith("record.json")]
    assert sorted(payloads) == sorted([stored.payload_key, winner["inputs"]["image"]])  # losers cleaned up


def test_a_retried_create_whose_first_write_landed_is_ours(tasks, monkeypatch):
    tid = new_task_id()
    real = tasks.store.put_if

    def put_if_twice(key, data, *args, **kw):  # the first try lands, the library retries it
        real(key, data, *args, **kw)
        if key.endswith("record.json"):
            raise PreconditionFailed(key)
        return "etag"

    monkeypatch.setattr(tasks.store, "put_if", put_if_twice)
    stored, created = tasks.create(record(tid), {})
    assert created and tasks.payload(stored) is not None


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


def test_settle_drops_marker_and_payload_and_queues_webhook(tasks):
    tid = new_task_id()
    tasks.create(record(tid, webhook=True, deadline_at=2e9), {}, {"image": b"x"}, webhook="https://hooks.example/x")
    done = tasks.update("acme", tid, lambda r: r.move("SUCCESS"))
    tasks.settle(done)
    assert tasks.queued() == [] and tasks.payload(done) is None
    assert [i.key for i in tasks.store.list(f"tenants/acme/tasks/{tid}/")] == [f"tenants/acme/tasks/{tid}/record.json"]
    assert tasks.store.exists(outbox_key(tid, "acme"))
    assert done.progress == 1.0 and done.finished_at is not None


def test_idempotency_binding(tasks):
    assert tasks.claim_idempotency_key("acme", "k", "h1", "t1") is None
    assert tasks.claim_idempotency_key("acme", "k", "h1", "t1") is None  # a retried write of our own
    assert tasks.claim_idempotency_key("acme", "k", "h2", "t2")["task_id"] == "t1"
    assert tasks.claim_idempotency_key("other", "k", "h2", "t3") is None
    assert tasks.idempotency_binding("acme", "k")["body_sha256"] == "h1"


def test_queue_and_outbox_keys_round_trip():
    assert parse_queue_key(queue_key("abc", "acme", "sd15-a10g")) == ("abc", "acme", "sd15-a10g", None, 5)
    # The deadline is rounded up: a marker never says a task is late before its record does.
    assert parse_queue_key(queue_key("abc", "acme", "sd15-a10g", 1700000000.2)) == ("abc", "acme", "sd15-a10g",
                                                                                   1700000001.0, 5)
    # A priority other than the default is in the key too (the dispatch order needs no record read).
    assert parse_queue_key(queue_key("abc", "acme", "sd15-a10g", 17.0, priority=9)) == ("abc", "acme", "sd15-a10g", 17.0, 9)
    assert parse_queue_key(queue_key("abc", "acme", "sd15-a10g", priority=0)).priority == 0
    assert parse_queue_key("queue/a.b.c.p7.12") is None  # deadline before priority, never after
    assert parse_queue_key("queue/a.b.c.p10") is None
    assert parse_queue_key("queue/garbage") is None
    assert parse_queue_key("queue/a.b.c.notanumber") is None
    assert parse_outbox_key(outbox_key("abc", "acme")) == ("abc", "acme")
    assert parse_outbox_key("outbox/abc.json") is None


def test_a_create_that_loses_to_a_write_still_committing_waits_for_it(tasks, monkeypatch):
    """S3 answers 409 while the winner's write commits; the loser reads nothing yet. It must
    neither fail nor make a second task: it tries again until it sees the winner's."""
    tid = new_task_id()
    winner = record(tid)
    real_put_if = tasks.store.put_if
    conflicts = []

    def put_if(key, data, *args, **kwargs):
        if key.endswith("record.json") and kwargs.get("if_absent") and len(conflicts) < 3:
            conflicts.append(key)
            if len(conflicts) == 3:  # the winner's write becomes visible on the third try
                winner.move("PENDING", "submitted")
                real_put_if(key, winner.model_dump_json().encode(), if_absent=True)
            raise PreconditionFailed(key)
        return real_put_if(key, data, *args, **kwargs)

    monkeypatch.setattr(tasks.store, "put_if", put_if)
    stored, created = tasks.create(record(tid), {})
    assert not created and stored.task_id == tid and len(conflicts) == 3
