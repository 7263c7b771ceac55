"""Face Consistency / Face Avatar task handlers on tiny SDXL pipelines, the tiny face pack and the
tiny FaceID adapter (CPU), called the way the diffusion family calls a handler."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from deployments.errors import InvalidJobError, NoFaceDetected
from deployments.families.faces import AVATAR_PROMPT, GENDER_WORDS, AvatarTask, FaceTask, avatar_prompt
from deployments.loader import load_pipeline
from deployments.pipelines.tiny_faces import BACKGROUND, draw_faces, write_tiny_face_pack, write_tiny_faceid_adapter
from deployments.tiny import build_sdxl
from deployments.types import ImageJob

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    target = tmp_path_factory.mktemp("tiny-sdxl")
    build_sdxl().save_pretrained(target, safe_serialization=True)
    return load_pipeline(str(target))


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    root = tmp_path_factory.mktemp("face-components")
    return {"face_analysis": str(write_tiny_face_pack(root / "face-pack")),
            "face_adapter": str(write_tiny_faceid_adapter(root / "faceid"))}


@pytest.fixture(scope="module")
def task(pipelines, components):
    return FaceTask(pipelines, components, [])


def _job(**kw: Any) -> ImageJob:
    base: dict[str, Any] = dict(task="face", tenant="t", request_id="r", prompt="a portrait", num_inference_steps=2,
                                guidance_scale=5.0, strength=0.8, seed=1, image=draw_faces((320, 240), [(150, 120, 60, 1)]))
    base.update(kw)
    return ImageJob(**base)


def _run(handler, job: ImageJob):
    """What the diffusion family does with a handler: check, call, add the generation kwargs, run."""
    handler.check(job)
    with handler.call(job) as (pipe, kwargs, extras, meta):
        kwargs.update(prompt=job.prompt, negative_prompt=job.negative_prompt, num_inference_steps=job.num_inference_steps,
                      guidance_scale=job.guidance_scale, num_images_per_prompt=job.batch, output_type="np",
                      generator=[torch.Generator("cpu").manual_seed((job.seed or 0) + i) for i in range(job.batch)])
        with torch.inference_mode():
            images = pipe(**kwargs).images
    return images, extras, meta


def test_output_has_the_requested_size_and_the_face_in_meta(task):
    job = _job(height=64, width=96)  # the reference photo is 320x240: the output size is the request's
    images, extras, meta = _run(task, job)
    assert images.shape == (1, 64, 96, 3) and extras == []
    face = meta["face"]
    assert face["faces_detected"] == 1 and face["score"] > 0.5
    assert all(abs(a - b) <= 5 for a, b in zip(face["bbox"], [90, 60, 211, 181])), face["bbox"]
    default, _, _ = _run(task, _job())
    assert default.shape == (1, 128, 128, 3)  # no size asked: the model's default


def test_the_largest_face_is_used(task):
    image = draw_faces((400, 300), [(70, 70, 30, 2), (260, 170, 90, 1)])
    _, _, meta = _run(task, _job(image=image, height=64, width=64))
    assert meta["face"]["faces_detected"] == 2
    assert abs(meta["face"]["bbox"][2] - meta["face"]["bbox"][0] - 181) <= 8


def test_identity_and_strength_change_the_picture(task, pipelines):
    a, _, _ = _run(task, _job(height=64, width=64))
    again, _, _ = _run(task, _job(height=64, width=64))
    other, _, _ = _run(task, _job(height=64, width=64, image=draw_faces((320, 240), [(150, 120, 60, 2)])))
    weak, _, _ = _run(task, _job(height=64, width=64, strength=0.0))
    np.testing.assert_array_equal(a, again)
    assert np.abs(a - other).max() > 1e-3
    assert np.abs(a - weak).max() > 1e-3
    assert pipelines.text2img.unet.encoder_hid_proj is None  # detached after every call


def test_batch_and_no_guidance(task):
    images, _, _ = _run(task, _job(height=64, width=64, batch=2))
    assert images.shape == (2, 64, 64, 3)
    images, _, _ = _run(task, _job(height=64, width=64, batch=2, guidance_scale=1.0))
    assert images.shape == (2, 64, 64, 3)


def test_no_face_is_refused_before_the_model_runs(task, pipelines):
    plain = Image.new("RGB", (320, 240), BACKGROUND)
    with pytest.raises(NoFaceDetected) as err:
        _run(task, _job(image=plain))
    assert err.value.error_type == "NoFaceDetected"
    assert pipelines.text2img.unet.encoder_hid_proj is None


@pytest.mark.parametrize("strength", [1.5, -0.1, math.nan])
def test_strength_outside_0_1_is_refused(task, strength):
    with pytest.raises(InvalidJobError) as err:
        task.check(_job(strength=strength))
    assert err.value.field == "strength"


def test_other_invalid_jobs(task):
    with pytest.raises(InvalidJobError) as err:
        task.check(_job(image=None))
    assert err.value.field == "image"
    for field, value in (("height", 60), ("width", 4), ("height", 4096)):
        with pytest.raises(InvalidJobError) as err:
            task.check(_job(**{field: value}))
        assert err.value.field == field


def test_only_sdxl_families_and_both_components(pipelines, components):
    with pytest.raises(ValueError, match="SDXL"):
        FaceTask(dataclasses.replace(pipelines, kind="sd"), components, [])
    with pytest.raises(ValueError, match="face_adapter"):
        FaceTask(pipelines, {"face_analysis": components["face_analysis"]}, [])


def test_avatar_shares_the_loaded_models_and_checks_gender(task, pipelines, components):
    avatar = AvatarTask(pipelines, components, [])
    assert avatar.analyzer is task.analyzer and avatar.adapter is task.adapter  # loaded once per replica
    assert avatar.all_pipelines() == task.all_pipelines() == [task.adapter.pipe]
    images, _, meta = _run(avatar, _job(task="avatar", gender="female", height=64, width=64))
    assert images.shape == (1, 64, 64, 3) and meta["face"]["faces_detected"] == 1
    with pytest.raises(InvalidJobError) as err:
        avatar.check(_job(task="avatar", gender="robot"))
    assert err.value.field == "gender"


def test_avatar_prompt():
    assert AVATAR_PROMPT == (
        "black plain background, VECTOR CARTOON ILLUSTRATION, half-body shot portrait {gender_word}, 5 o clock shadow, "
        "3d bitmoji avatar render, pixar, high def textures 8k, highly detailed, 3d render, award winning, "
        "no background elements"
    )
    assert GENDER_WORDS == {"male": "man", "female": "woman", "neutral": "person"}
    assert avatar_prompt(None, "male") == AVATAR_PROMPT.replace("{gender_word}", "man")
    assert avatar_prompt(None, None) == AVATAR_PROMPT.replace("{gender_word}", "person")
    assert avatar_prompt("a knight", "female") == "a knight"
