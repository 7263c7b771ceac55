"""Model-dependent checks in the ingress: what the family would refuse is refused before
a job is dispatched or stored, with the family's own words; slow facts never block."""

import asyncio

import pytest

from deployments.types import ImageJob
from ingress.errors import ValidationFailed
from ingress.model_checks import ModelFacts, check_job

FACTS = {"scheduler_config": {"_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "skip_prk_steps": True},
         "text_encoder_layers": 4}


def job(task="text2img", **kw) -> ImageJob:
    return ImageJob(task=task, tenant="t", request_id="r", prompt="p", num_inference_steps=10, **kw)


@pytest.mark.parametrize("kw, field", [
    (dict(clip_skip=4), "clip_skip"),
    (dict(scheduler="DDIMScheduler", use_karras_sigmas=True), "use_karras_sigmas"),
    (dict(scheduler="EulerDiscreteScheduler", algorithm_type="dpmsolver++"), "algorithm_type"),
    (dict(scheduler="ScoreSdeVeScheduler"), "scheduler"),
    (dict(use_karras_sigmas=True), "use_karras_sigmas"),  # the model's own default (PNDM) has none
])
def test_what_the_model_refuses_is_a_422_naming_the_field(kw, field):
    with pytest.raises(ValidationFailed) as info:
        check_job(job(**kw), FACTS)
    assert info.value.message.startswith(f"{field}:")
    check_job(job(**kw), None)  # without the facts the family decides


def test_the_edges_pass():
    check_job(job(clip_skip=3, scheduler="DPMSolverMultistepScheduler", use_karras_sigmas=True,
                  algorithm_type="sde-dpmsolver++"), FACTS)


def test_strength_times_steps_below_one_is_refused_without_facts():
    with pytest.raises(ValidationFailed, match="strength: .* at least 1"):
        check_job(job("img2img", strength=0.0), None)
    with pytest.raises(ValidationFailed):
        check_job(job("inpaint", strength=0.05), None)
    check_job(job("img2img", strength=0.1), None)


class _Info:
    def __init__(self, delay):
        self.delay = delay
        self.calls = 0

    def remote(self):
        self.calls += 1

        async def answer():
            await asyncio.sleep(self.delay)
            return FACTS
        return answer()


class _Handle:
    def __init__(self, delay):
        self.info = _Info(delay)


def test_facts_are_fetched_once_and_a_slow_family_does_not_block():
    async def go():
        fast, slow = _Handle(0), _Handle(30)
        facts = ModelFacts({"fast": fast, "slow": slow}, timeout_seconds=0.2)
        assert await facts.get("fast") == FACTS and await facts.get("fast") == FACTS
        assert fast.info.calls == 1
        assert await facts.get("slow") is None  # gave up waiting; the family checks the job itself
        assert await facts.get("slow") is None and slow.info.calls == 1  # still the one fetch under way
        assert await facts.get("unknown") is None
    asyncio.run(go())
