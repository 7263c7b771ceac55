"""The status view: bounded staleness, one read per task per window, tenants apart."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ingress.tasks.service import task_envelope
from ingress.tasks.status_view import MISSING_SECONDS, StatusView
from storage.factory import open_store
from storage.local import LocalObjectStore
from storage.settings import StorageSettings
from storage.tasks import TaskRecord, TaskStore, new_task_id


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(tenant: str = "acme", task_id: str | None = None, status: str = "PENDING", progress: float = 0.0) -> TaskRecord:
    r = TaskRecord(task_id=task_id or new_task_id(), tenant=tenant, app_id="ap-x", route="getTextToImage",
                   family="sd15", gpu="a10g", deployment="sd15-a10g")
    if status != "PENDING":
        r.move("STARTED")
        r.progress = progress
    if status in ("SUCCESS", "FAILURE", "REVOKED"):
        r.move(status)  # type: ignore[arg-type]
    return r


class Records:
    """A fake store of records: counts reads, and can hold a read until released."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str], TaskRecord] = {}
        self.refs: dict[tuple[str, str], str] = {}
        self.reads = 0
        self.gate: threading.Event | None = None
        self.fail: Exception | None = None

    def add(self, r: TaskRecord) -> TaskRecord:
        self.by_key[(r.tenant, r.task_id)] = r.model_copy(deep=True)
        return r

    def read(self, tenant: str, task_id: str) -> TaskRecord | None:
        self.reads += 1
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        found = self.by_key.get((tenant, task_id))
        return None if found is None else found.model_copy(deep=True)

    def resolve(self, tenant: str, reference_id: str) -> str | None:
        self.reads += 1
        return self.refs.get((tenant, reference_id))


URLS = LocalObjectStore("/nonexistent-status-view", "http://127.0.0.1:8000", b"s")  # signs URLs; never opened


def view_of(records: Records, clock: Clock, max_age: float = 1.0, **kw) -> StatusView:
    return StatusView(records.read, records.resolve, lambda r: task_envelope(r, URLS, 600),
                      max_age=max_age, finished_age=300, clock=clock, **kw)


def run(coro):
    return asyncio.run(coro)


def test_polls_within_the_window_answer_from_memory_and_a_change_shows_after_it():
    records, clock = Records(), Clock()
    view = view_of(records, clock)
    r = records.add(record(status="STARTED", progress=0.25))

    async def scenario():
        first = await view.get("acme", r.task_id)
        records.add(record(task_id=r.task_id, status="STARTED", progress=0.5))  # the worker reports progress
        clock.now += 0.99
        held = await view.get("acme", r.task_id)
        clock.now += 0.02  # the window (1 s from the read's start) has passed
        fresh = await view.get("acme", r.task_id)
        return first, held, fresh

    first, held, fresh = run(scenario())
    assert (first.progress, held.progress, fresh.progress) == (0.25, 0.25, 0.5)
    assert records.reads == 2


def test_concurrent_polls_of_one_task_share_one_read_and_survive_a_caller_going_away():
    records, clock = Records(), Clock()
    view = view_of(records, clock)
    r = records.add(record())
    records.gate = threading.Event()

    async def scenario():
        polls = [asyncio.create_task(view.get("acme", r.task_id)) for _ in range(50)]
        await asyncio.sleep(0.05)
        polls[0].cancel()  # its client disconnected: the others still get the answer
        records.gate.set()
        return await asyncio.gather(*polls[1:])

    answers = run(scenario())
    assert records.reads == 1 and {a.task_id for a in answers} == {r.task_id}


def test_a_tenant_never_gets_another_tenants_entry():
    records, clock = Records(), Clock()
    view = view_of(records, clock)
    r = records.add(record(tenant="acme"))

    async def scenario():
        return await view.get("acme", r.task_id), await view.get("other", r.task_id)

    mine, theirs = run(scenario())
    assert mine is not None and mine.task_id == r.task_id
    assert theirs is None and view.peek("other", r.task_id) is None


def test_unknown_ids_are_remembered_only_briefly():
    records, clock = Records(), Clock()
    view = view_of(records, clock)
    task_id = new_task_id()

    async def scenario():
        answers = [await view.get("acme", task_id) for _ in range(5)]
        assert records.reads == 1
        records.add(record(task_id=task_id))
        clock.now += MISSING_SECONDS + 0.001
        answers.append(await view.get("acme", task_id))
        return answers

    answers = run(scenario())
    assert answers[:5] == [None] * 5 and answers[5] is not None and records.reads == 2


def test_a_terminal_state_is_never_hidden_longer_than_the_window_and_then_held():
    records, clock = Records(), Clock()
    view = view_of(records, clock)
    r = records.add(record(status="STARTED"))

    async def scenario():
        await view.get("acme", r.task_id)
        records.add(record(task_id=r.task_id, status="SUCCESS"))
        clock.now += 1.0
        done = await view.get("acme", r.task_id)
        reads = records.reads
        clock.now += 200  # a finished envelope is kept while its URLs keep half their life
        again = await view.get("acme", r.task_id)
        assert records.reads == reads
        clock.now += 101
        await view.get("acme", r.task_id)
        return done, again

    done, again = run(scenario())
    assert done.status == again.status == "SUCCESS" and records.reads == 3


def test_an_older_read_never_replaces_a_newer_write_of_this_replica():
    records, clock = Records(), Clock()
    view = view_of(records, clock)
    r = records.add(record())
    records.gate = threading.Event()

    async def scenario():
        slow = asyncio.create_task(view.get("acme", r.task_id))  # a read that started before the cancel
        await asyncio.sleep(0.05)
        cancelled = record(task_id=r.task_id, status="REVOKED")
        clock.now += 0.1
        view.put(cancelled, task_envelope(cancelled, URLS, 600), clock())
        records.gate.set()
        late = await slow
        return late, await view.get("acme", r.task_id)

    late, now = run(scenario())
    assert late.status == "REVOKED" and now.status == "REVOKED"


def test_a_failed_read_is_not_remembered():
    records, clock = Records(), Clock()
    view = view_of(records, clock)
    r = records.add(record())
    records.fail = ConnectionError("store down")

    async def scenario():
        with pytest.raises(ConnectionError):
            await view.get("acme", r.task_id)
        records.fail = None
        return await view.get("acme", r.task_id)

    assert run(scenario()).task_id == r.task_id and records.reads == 2


def test_the_view_is_bounded():
    records, clock = Records(), Clock()
    view = view_of(records, clock, max_entries=3)
    ids = [records.add(record()).task_id for _ in range(5)]

    async def scenario():
        for task_id in ids:
            await view.get("acme", task_id)

    run(scenario())
    assert [view.peek("acme", t) is not None for t in ids] == [False, False, True, True, True]


def test_by_reference_follows_the_mapping_within_the_window():
    records, clock = Records(), Clock()
    view = view_of(records, clock)
    first, second = records.add(record()), records.add(record())
    records.refs[("acme", "order-17")] = first.task_id

    async def scenario():
        assert await view.get_by_reference("other", "order-17") is None
        a = await view.get_by_reference("acme", "order-17")
        records.refs[("acme", "order-17")] = second.task_id  # a new submit with the same reference_id
        b = await view.get_by_reference("acme", "order-17")
        clock.now += 1.0
        c = await view.get_by_reference("acme", "order-17")
        return a, b, c

    a, b, c = run(scenario())
    assert (a.task_id, b.task_id, c.task_id) == (first.task_id, first.task_id, second.task_id)


def test_on_a_real_store_a_worker_write_shows_within_the_window(tmp_path):
    """The same through a ``TaskStore`` on local files, written by compare-and-swap."""
    store = open_store(StorageSettings(backend="local", local_root=tmp_path, signing_secret="s"))
    tasks, clock = TaskStore(store), Clock()
    view = StatusView(tasks.get, tasks.find_by_reference, lambda r: task_envelope(r, store, 600),
                      max_age=1.0, finished_age=300, clock=clock)
    r = record()
    tasks.create(r, {"job": {}})

    def start(rec: TaskRecord):
        rec.move("STARTED")
        rec.progress = 0.4

    async def scenario():
        before = await view.get("acme", r.task_id)
        tasks.update("acme", r.task_id, start)
        held = await view.get("acme", r.task_id)
        clock.now += 1.0
        return before, held, await view.get("acme", r.task_id)

    before, held, after = run(scenario())
    assert (before.status, held.status, after.status) == ("PENDING", "PENDING", "STARTED")
    assert after.progress == 0.4 and view.reads == 2


def test_the_window_starts_when_the_read_starts_not_when_it_lands():
    records, clock = Records(), Clock()
    view = view_of(records, clock)
    r = records.add(record())
    records.gate = threading.Event()

    async def scenario():
        slow = asyncio.create_task(view.get("acme", r.task_id))
        await asyncio.sleep(0.05)
        clock.now += 0.6  # a slow store
        records.gate.set()
        await slow
        clock.now += 0.5  # 1.1 s after the read started: too old, whatever the read's length
        assert view.peek("acme", r.task_id) is None
        await view.get("acme", r.task_id)

    run(scenario())
    assert records.reads == 2


def test_a_submit_seen_while_a_not_found_read_was_out_is_not_hidden():
    records, clock = Records(), Clock()
    view = view_of(records, clock)
    r = record()
    records.gate = threading.Event()

    async def scenario():
        early = asyncio.create_task(view.get("acme", r.task_id))  # started before the record existed
        await asyncio.sleep(0.05)
        clock.now += 0.01
        view.put(records.add(r), task_envelope(r, URLS, 600), clock())  # this replica's submit
        records.gate.set()
        return await early, await view.get("acme", r.task_id)

    early, now = run(scenario())
    assert early is not None and now is not None and records.reads == 1
