"""Submitting async tasks without a cluster: racing submits with one Idempotency-Key."""

import asyncio
import io
import time

from PIL import Image

from deployments.types import ImageJob
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
