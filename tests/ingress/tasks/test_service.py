"""Async tasks without a cluster: racing submits with one Idempotency-Key; status reads and cancels through the view."""

import asyncio
import io
import time

import pytest
from PIL import Image

from deployments.types import ImageJob
from ingress.contract.errors import NotFound
from ingress.contract.schemas.generation import ImageToImageRequest
from ingress.tasks import service as async_tasks
from ingress.tasks.service import TaskService, body_digest
from ingress.wiring.registry import AppConfig
from ingress.wiring.settings import IngressSettings
from storage.factory import open_store
from storage.settings import StorageSettings
from storage.tasks import TaskStore, new_task_id

APP = AppConfig(app_id="ap-x", name="x", family="sd15", task="img2img", inference_types=["a10g"])


def test_racing_submits_with_one_key_make_one_task_one_marker_one_payload(tmp_path, monkeypatch):
    store = open_store(StorageSettings(backend="local", local_root=tmp_path, signing_secret="s"))

    class Clock:  # each submit reads a clock seconds apart from the others' (slow inputs, skewed hosts)
        now = time.time()

        @classmethod
        def time(cls):
            cls.now += 7.0
            return cls.now

    monkeypatch.setattr(async_tasks, "time", Clock)
    kicks = []

    async def kick(tenant, task_id, deployment):
        kicks.append(task_id)

    service = TaskService(TaskStore(store), 3600, IngressSettings(), kick)
    req = ImageToImageRequest(app_id="ap-x", image="https://h.example/a.png", celery=True)
    digest = body_digest(req.model_dump(mode="json", exclude_none=True))

    async def one(i):
        await asyncio.sleep(0.001 * (i % 3))
        job = ImageJob(task="img2img", tenant="acme", request_id=new_task_id(), prompt="p",
                       image=Image.new("RGB", (64, 64), (i, i, i)))
        return await service.submit("getImageToImage", APP, "a10g", req, job, {}, "acme", "key-1", digest)

    async def all_of_them():
        return await asyncio.gather(*(one(i) for i in range(6)))

    envelopes = asyncio.run(all_of_them())
    ids = {e.task_id for e in envelopes}
    assert len(ids) == 1 and all(e.status == "PENDING" for e in envelopes)
    (task_id,) = ids
    assert kicks == [task_id]
    assert [q[0] for _, q in service.tasks.queued()] == [task_id]  # one marker, whatever each submit's clock said
    files = [i.key for i in store.list(f"tenants/acme/tasks/{task_id}/")]
    assert len(files) == 3  # the record, and the winner's job and input; the losers cleaned up theirs
    record = service.tasks.get("acme", task_id)
    payload = service.tasks.payload(record)
    with Image.open(io.BytesIO(store.get(payload["inputs"]["image"]))) as stored:
        assert stored.size == (64, 64)


def _service(tmp_path):
    store = open_store(StorageSettings(backend="local", local_root=tmp_path, signing_secret="s"))
    tasks = TaskStore(store)
    reads = []
    get = tasks.get

    def counted(tenant, task_id):
        reads.append(task_id)
        return get(tenant, task_id)

    tasks.get = counted  # type: ignore[method-assign]

    async def kick(tenant, task_id, deployment):
        pass

    return TaskService(tasks, 3600, IngressSettings(), kick), reads


def _submit(service, tenant="acme", reference_id=None):
    req = ImageToImageRequest(app_id="ap-x", image="https://h.example/a.png", celery=True, reference_id=reference_id)
    job = ImageJob(task="img2img", tenant=tenant, request_id=new_task_id(), prompt="p",
                   image=Image.new("RGB", (8, 8)))
    return service.submit("getImageToImage", APP, "a10g", req, job, {}, tenant, None, None)


def test_status_after_a_submit_and_a_cancel_on_this_replica_costs_no_read(tmp_path):
    service, reads = _service(tmp_path)

    async def scenario():
        env = await _submit(service)
        polled = [await service.status("acme", env.task_id) for _ in range(20)]
        assert reads == [] and {p.status for p in polled} == {"PENDING"}
        cancelled = await service.cancel("acme", env.task_id)
        assert cancelled.status == "REVOKED"
        after = await service.status("acme", env.task_id)
        return after

    after = asyncio.run(scenario())
    assert after.status == "REVOKED" and reads == []


def test_status_is_404_for_another_tenant_an_unknown_id_and_an_implausible_one(tmp_path):
    service, _ = _service(tmp_path)

    async def scenario():
        env = await _submit(service, reference_id="order-17")
        for tenant, task_id in (("other", env.task_id), ("acme", new_task_id()), ("acme", "../x"), ("acme", "a" * 65)):
            with pytest.raises(NotFound):
                await service.status(tenant, task_id)
        with pytest.raises(NotFound):
            await service.status("other", None, "order-17")
        with pytest.raises(NotFound):
            await service.cancel("other", env.task_id)
        return env, await service.status("acme", None, "order-17")

    env, by_ref = asyncio.run(scenario())
    assert by_ref.task_id == env.task_id


def test_a_worker_write_from_another_process_shows_within_the_renew_interval(tmp_path):
    service, reads = _service(tmp_path)
    clock = [100.0]
    service.view.clock = lambda: clock[0]

    def start(r):
        r.move("STARTED")
        r.progress = 0.5

    async def scenario():
        env = await _submit(service)
        service.tasks.update("acme", env.task_id, start)
        held = await service.status("acme", env.task_id)
        clock[0] += service.settings.task_renew_seconds
        return held, await service.status("acme", env.task_id)

    held, fresh = asyncio.run(scenario())
    assert held.status == "PENDING" and (fresh.status, fresh.progress) == ("STARTED", 0.5) and len(reads) == 1
