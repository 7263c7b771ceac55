from __future__ import annotations

import pytest

from deployments.errors import InvalidJobError
from deployments.schedulers import (
    SCHEDULER_NAMES,
    build_scheduler,
    usable_scheduler_names,
)

ALWAYS_REFUSED = {"DDIMInverseScheduler", "IPNDMScheduler", "KarrasVeScheduler", "ScoreSdeVeScheduler"}


@pytest.fixture(scope="module")
def base_config(sd_pipelines):
    return dict(sd_pipelines.text2img.scheduler.config)


def test_contract_names():
    assert len(SCHEDULER_NAMES) == 18 == len(set(SCHEDULER_NAMES))
    usable = usable_scheduler_names()
    assert set(usable) <= set(SCHEDULER_NAMES)
    assert not set(usable) & ALWAYS_REFUSED
    assert {"DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "LCMScheduler"} <= set(usable)
    assert len(usable) >= 13


@pytest.mark.parametrize("name", usable_scheduler_names())
def test_usable_names_build_fresh_instances(name, base_config):
    a = build_scheduler(name, base_config)
    b = build_scheduler(name, base_config)
    assert type(a).__name__ == name
    assert a is not b
    # the model's beta schedule carries over
    if "beta_schedule" in a.config:
        assert a.config.beta_schedule == "scaled_linear"


def test_none_means_the_models_default(base_config):
    a = build_scheduler(None, base_config)
    b = build_scheduler(None, base_config)
    assert type(a).__name__ == base_config["_class_name"] == "PNDMScheduler"
    assert a is not b


@pytest.mark.parametrize("name", sorted(set(SCHEDULER_NAMES) - set(usable_scheduler_names())) + ["NopeScheduler"])
def test_unusable_names_are_refused(name, base_config):
    with pytest.raises(InvalidJobError) as info:
        build_scheduler(name, base_config)
    assert info.value.field == "scheduler"
    assert "EulerDiscreteScheduler" in info.value.message  # lists what works


def test_karras_sigmas(base_config):
    s = build_scheduler("EulerDiscreteScheduler", base_config, use_karras_sigmas=True)
    assert s.config.use_karras_sigmas is True
    s = build_scheduler("DPMSolverMultistepScheduler", base_config, use_karras_sigmas=False)
    assert s.config.use_karras_sigmas is False
    for name in ("DDIMScheduler", "EulerAncestralDiscreteScheduler", "LCMScheduler"):
        with pytest.raises(InvalidJobError) as info:
            build_scheduler(name, base_config, use_karras_sigmas=True)
        assert info.value.field == "use_karras_sigmas"


@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("DPMSolverMultistepScheduler", "dpmsolver++", "dpmsolver++"),
        ("DPMSolverMultistepScheduler", "dpmsolver+++", "dpmsolver++"),
        ("DPMSolverMultistepScheduler", "sde-dpmsolver++", "sde-dpmsolver++"),
        ("DPMSolverMultistepScheduler", "dpmsolver", "dpmsolver"),
        ("DPMSolverMultistepScheduler", "sde-dpmsolver", "sde-dpmsolver"),
        ("DPMSolverSinglestepScheduler", "dpmsolver", "dpmsolver"),
        ("DPMSolverSinglestepScheduler", "sde-dpmsolver++", "sde-dpmsolver++"),
    ],
)
def test_algorithm_type_accepted(name, value, expected, base_config):
    s = build_scheduler(name, base_config, algorithm_type=value)
    assert s.config.algorithm_type == expected


@pytest.mark.parametrize(
    "name,value",
    [
        ("EulerDiscreteScheduler", "dpmsolver++"),
        ("DEISMultistepScheduler", "deis"),
        ("DPMSolverMultistepScheduler", "bogus"),
        ("DPMSolverSinglestepScheduler", "sde-dpmsolver"),
    ],
)
def test_algorithm_type_refused(name, value, base_config):
    with pytest.raises(InvalidJobError) as info:
        build_scheduler(name, base_config, algorithm_type=value)
    assert info.value.field == "algorithm_type"


def test_pndm_from_a_non_pndm_config_skips_prk(sdxl_pipelines):
    s = build_scheduler("PNDMScheduler", dict(sdxl_pipelines.text2img.scheduler.config))
    assert s.config.skip_prk_steps is True
