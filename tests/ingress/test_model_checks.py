"""Model-dependent checks in the ingress: what the family would refuse is refused before
a job is dispatched or stored, with the family's own words; slow facts never block."""

import asyncio

import pytest

from deployments.schedulers import scheduler_capabilities
from deployments.types import ImageJob
from ingress.contract.errors import ValidationFailed
from ingress.model_checks import ModelFacts, check_job

FACTS = {"schedulers": scheduler_capabilities(), "default_scheduler": "PNDMScheduler", "text_encoder_layers": 4}


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
    def __init__(self, answers, delay=0.0):
        self.answers = list(answers)
        self.delay = delay
        self.calls = 0

    def remote(self):
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

        async def reply():
            await asyncio.sleep(self.delay)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return reply()


class _Handle:
    def __init__(self, answers, delay=0.0):
        self.info = _Info(answers, delay)


def test_facts_are_fetched_in_the_background_and_only_async_submits_wait_for_them():
    async def go():
        slow = _Handle([FACTS], delay=30)
        facts = ModelFacts({"fast": _Handle([FACTS]), "slow": slow}, wait_seconds=0.2)
        assert await facts.get("fast", wait=True) == FACTS
        assert await facts.get("slow") is None  # a synchronous call never waits
        began = asyncio.get_running_loop().time()
        assert await facts.get("slow", wait=True) is None  # an async submit waits a little, no more
        assert asyncio.get_running_loop().time() - began < 1
        assert slow.info.calls == 1  # one fetch under way, not one per request
        assert await facts.get("unknown", wait=True) is None
        for task in facts._fetchers.values():
            task.cancel()
    asyncio.run(go())


def test_a_failed_fetch_is_retried_and_malformed_facts_are_ignored():
    async def go():
        flaky = _Handle([RuntimeError("busy"), FACTS])
        old = _Handle([{"scheduler_config": {}, "schedulers": ["a list, from an older family"]}])
        facts = ModelFacts({"flaky": flaky, "old": old}, wait_seconds=3)
        assert await facts.get("flaky", wait=True) == FACTS and flaky.info.calls == 2
        assert await facts.get("old", wait=True) is None  # not understood: the family decides
        check_job(job(scheduler="DDIMScheduler", use_karras_sigmas=True), None)  # and nothing breaks
        for task in facts._fetchers.values():
            task.cancel()
    asyncio.run(go())


def test_facts_that_break_the_checks_never_become_a_500():
    broken = {"schedulers": {"PNDMScheduler": {"usable": True, "karras": "maybe", "algorithms": 7}},
              "default_scheduler": "PNDMScheduler", "text_encoder_layers": 4}
    check_job(job(algorithm_type="dpmsolver++"), broken)  # a TypeError inside is left to the family


def test_option_pre_checks_say_what_the_family_says(tmp_path):
    """The ingress refuses an async submit's LoRA or VAE in the family's own words."""
    from deployments.errors import InvalidJobError
    from deployments.pipelines.lora import LoraLibrary
    from deployments.pipelines.vae import VaeLibrary
    from deployments.types import ImageJob
    from ingress.contract.errors import ValidationFailed
    from ingress.model_checks import check_job

    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "ink.safetensors").write_bytes(b"x")
    (tmp_path / "vaes" / "soft").mkdir(parents=True)
    (tmp_path / "vaes" / "soft" / "config.json").write_text("{}")
    facts = {"loras": ["ink"], "vaes": ["soft"], "safety_checker": True}
    cases = [({"lora_model": "nope"}, lambda: LoraLibrary(tmp_path / "loras").parse("nope", None)),
             ({"lora_model": "../x"}, lambda: LoraLibrary(tmp_path / "loras").parse("../x", None)),
             ({"lora_model": "ink", "lora_strength": "3"}, lambda: LoraLibrary(tmp_path / "loras").parse("ink", "3")),
             ({"vae": "hard"}, lambda: VaeLibrary(tmp_path / "vaes").parse("hard"))]
    for fields, family_check in cases:
        job = ImageJob(task="text2img", tenant="t", request_id="r", **fields)
        with pytest.raises(InvalidJobError) as family:
            family_check()
        with pytest.raises(ValidationFailed) as ingress:
            check_job(job, {**FACTS, **facts})
        assert ingress.value.message == f"{family.value.field}: {family.value.message}"
