"""The family base in process: a call that Serve cancels (client gone, or the caller's timeout)
stops its model thread at the next step and ends only once the thread has, holding the job lock
(and so Serve's slot) until then; the next job then runs at once. The same for an async task's
attempt. A family whose ``produce`` loops over steps stands in for a model; steps are counted,
never timed."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from deployments.errors import TaskStopped
from deployments.families.base import FamilyBase, OnStep, Packaged, StopSignal, run_to_end
from deployments.types import ImageJob, TaskRef
from storage.factory import open_store
from storage.settings import StorageSettings
from tests.deployments.families.stopping import HeldStep, cancel_mid_job
from tests.deployments.test_tasks import dispatched

pytestmark = pytest.mark.timeout(120)


class StepFamily(FamilyBase[ImageJob]):
    """``produce`` runs ``num_inference_steps`` steps, reporting each; it records which jobs
    entered and which threads ended."""

    kind = "diffusion"

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self.entered: list[str] = []
        self.ended: list[str] = []

    def produce(self, job: ImageJob, on_step: OnStep | None, prepared: Any = None) -> int:
        self.entered.append(job.prompt)
        try:
            for i in range(job.num_inference_steps):
                if on_step is not None:
                    on_step(i + 1, job.num_inference_steps)
            return job.num_inference_steps
        finally:
            self.ended.append(job.prompt)

    def package(self, job: ImageJob, produced: int) -> tuple[list[Packaged], dict[str, Any]]:
        return [Packaged(b"x" * produced, "application/octet-stream", "bin")], {"steps": produced}


@pytest.fixture
def family(tmp_path):
    return StepFamily(store=open_store(StorageSettings(backend="local", local_root=tmp_path, signing_secret="s")),
                      family="steps", gpu="a10g")


def _job(name: str, steps: int = 50) -> ImageJob:
    return ImageJob(task="text2img", tenant="t", request_id=name, prompt=name, num_inference_steps=steps)


def test_a_cancelled_call_stops_at_the_next_step_and_ends_only_after_its_thread(family, monkeypatch):
    held = HeldStep(family, monkeypatch, hold_at=3)

    async def scenario():
        cancelled = await cancel_mid_job(family, family.run(_job("abandoned")), held)
        assert family.ended == ["abandoned"]  # its thread has ended, not merely been left behind
        result = await family.run(_job("next", steps=4))  # the model is free: the next job runs now
        return cancelled, result

    cancelled, result = asyncio.run(scenario())
    assert not cancelled.returned_while_held  # Serve's slot stays taken while the thread runs ...
    assert not cancelled.lock_free_while_held  # ... and so does the replica's job lock
    assert not cancelled.busy_when_returned  # the thread had ended when the call did
    assert cancelled.steps == 3  # it stopped at the step under way when it was cancelled
    assert held.steps == 3 + 4  # and the next job ran all four of its steps
    assert family.entered == ["abandoned", "next"] and result.meta == {"steps": 4}


def test_the_next_job_waits_for_the_abandoned_thread_then_runs_at_once(family, monkeypatch):
    held = HeldStep(family, monkeypatch, hold_at=2)

    async def scenario():
        first = asyncio.create_task(family.run(_job("abandoned")))
        assert await asyncio.to_thread(held.reached.wait, 60)
        queued = asyncio.create_task(family.run(_job("queued", steps=3)))
        first.cancel()
        for _ in range(5):
            await asyncio.sleep(0.01)
        waiting = (not first.done(), family.entered == ["abandoned"])  # the queued job has not started
        held.release()
        with pytest.raises(asyncio.CancelledError):
            await first
        return waiting, await queued

    (first_running, queued_not_started), result = asyncio.run(scenario())
    assert first_running and queued_not_started
    assert family.entered == ["abandoned", "queued"] and result.meta == {"steps": 3}
    assert held.steps == 2 + 3


def test_a_call_cancelled_while_queued_never_runs(family, monkeypatch):
    held = HeldStep(family, monkeypatch, hold_at=1)

    async def scenario():
        first = asyncio.create_task(family.run(_job("running", steps=2)))
        assert await asyncio.to_thread(held.reached.wait, 60)
        queued = asyncio.create_task(family.run(_job("queued")))
        await asyncio.sleep(0.01)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        held.release()
        return await first

    assert asyncio.run(scenario()).meta == {"steps": 2}
    assert family.entered == ["running"]


def test_a_cancelled_task_attempt_stops_at_the_next_step_and_ends_only_after_its_thread(family, monkeypatch):
    tid = dispatched(family.tasks, job=_job("task"))
    held = HeldStep(family, monkeypatch, hold_at=2)
    cancelled = asyncio.run(cancel_mid_job(family, family.run_task(TaskRef("t", tid, 1)), held))
    assert not cancelled.returned_while_held and not cancelled.lock_free_while_held
    assert not cancelled.busy_when_returned and cancelled.steps == 2
    assert family.ended == ["task"]
    record = family.tasks.get("t", tid)
    assert record.status == "STARTED" and not record.output_keys  # nothing written: its lease decides


def test_run_to_end_waits_out_repeated_cancellations_and_passes_results_through():
    release = threading.Event()

    async def scenario():
        stop = StopSignal()
        task = asyncio.create_task(run_to_end(lambda: release.wait(60) and "done", stop=stop))
        await asyncio.sleep(0.01)
        for _ in range(3):  # Serve may cancel more than once; the thread is still waited for
            task.cancel()
            await asyncio.sleep(0.01)
        pending = not task.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pending, stop.is_set(), await run_to_end(lambda: 7)

    assert asyncio.run(scenario()) == (True, True, 7)


def test_a_set_stop_signal_raises_at_the_next_step(family):
    stop = StopSignal()
    steps = []

    def on_step(done, total):
        steps.append(done)
        if done == 2:
            stop.set()

    with pytest.raises(TaskStopped) as info:
        family._produce(_job("x", steps=10), on_step, None, stop)
    assert info.value.reason == "abandoned" and steps == [1, 2] and stop.steps == 3
