"""IP-Adapter FaceID through diffusers' loader on tiny SDXL (CPU): the shared UNet stays as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deployments.loader import load_pipeline
from deployments.pipelines.faceid import FACEID_FILES, identity_embeds, load_face_adapter, uses_cfg
from deployments.pipelines.tiny_faces import FACEID_SDXL_WEIGHTS, faceid_state_dict, write_tiny_faceid_adapter
from deployments.tiny import build_sd15, build_sdxl

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    target = tmp_path_factory.mktemp("tiny-sdxl")
    build_sdxl().save_pretrained(target, safe_serialization=True)
    return target


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    return write_tiny_faceid_adapter(tmp_path_factory.mktemp("faceid"))


@pytest.fixture(scope="module")
def pipes(sdxl_dir):
    """A private SDXL load: these tests attach adapters to its UNet."""
    return load_pipeline(str(sdxl_dir))


@pytest.fixture(scope="module")
def adapter(pipes, adapter_dir):
    return load_face_adapter(pipes.text2img, str(adapter_dir))


def _embedding(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=512).astype(np.float32)
    return vector / np.linalg.norm(vector)


def _t2i(pipe, **kwargs):
    kwargs.setdefault("guidance_scale", 5.0)
    batch = kwargs.get("num_images_per_prompt", 1)
    return pipe(prompt="a portrait", num_inference_steps=2, output_type="np",
                generator=[torch.Generator().manual_seed(i) for i in range(batch)], **kwargs).images


def _face(adapter, strength=1.0, seed=0, guidance_scale=5.0, **kwargs):
    with adapter.attached() as pipe:
        pipe.set_ip_adapter_scale(strength)
        return _t2i(pipe, ip_adapter_image_embeds=adapter.image_embeds(_embedding(seed), guidance_scale),
                    guidance_scale=guidance_scale, **kwargs)


def _unet_state(unet):
    """What must be identical outside a face call: processors and attention projections, by identity."""
    attns = {name[: -len(".processor")] for name in unet.attn_processors}
    projections = {}
    for path in attns:
        attn = unet.get_submodule(path)
        projections[path] = (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0])
    return dict(unet.attn_processors), projections, unet.encoder_hid_proj, unet.config.encoder_hid_dim_type


def _same_state(a, b) -> bool:
    return (a[0].keys() == b[0].keys() and all(a[0][k] is b[0][k] for k in a[0])
            and all(all(x is y for x, y in zip(a[1][k], b[1][k])) for k in a[1]) and a[2] is b[2] and a[3] == b[3])


def test_tiny_file_has_h94_faceid_layout(adapter_dir, pipes):
    assert FACEID_FILES["sdxl"] == (None, FACEID_SDXL_WEIGHTS)
    state = torch.load(adapter_dir / FACEID_SDXL_WEIGHTS, weights_only=True)
    assert set(state) == {"image_proj", "ip_adapter"}
    assert set(state["image_proj"]) == {f"{p}.{w}" for p in ("proj.0", "proj.2", "norm") for w in ("weight", "bias")}
    names = list(pipes.text2img.unet.attn_processors)
    cross = [i for i, n in enumerate(names) if n.endswith("attn2.processor")]
    expected = {f"{i}.to_{kv}_ip.weight" for i in cross for kv in "kv"}
    expected |= {f"{i}.to_{p}_lora.{d}.weight" for i in range(len(names)) for p in ("q", "k", "v", "out") for d in ("down", "up")}
    assert set(state["ip_adapter"]) == expected


def test_load_leaves_the_shared_unet_untouched(pipes, adapter_dir):
    base = pipes.text2img
    before_state = _unet_state(base.unet)
    before = _t2i(base)
    adapter = load_face_adapter(base, str(adapter_dir))
    assert _same_state(_unet_state(base.unet), before_state)
    assert base.get_list_adapters() == {}  # no peft "faceid_0" left in the shared UNet
    assert adapter.pipe.unet is base.unet and adapter.pipe.image_encoder is None
    assert adapter.processors and adapter.projection is not None and adapter.embed_dim == 512
    assert len(adapter.loras) == 4 * len(before_state[0])  # q/k/v/out of every attention
    np.testing.assert_array_equal(_t2i(base), before)


def test_attached_installs_everything_and_restores_it(pipes, adapter):
    from deployments.pipelines.ip_adapter import _ip_processor_types

    unet = pipes.text2img.unet
    before = _unet_state(unet)
    with adapter.attached():
        inside = _unet_state(unet)
        assert any(isinstance(p, _ip_processor_types()) for p in inside[0].values())
        assert inside[2] is adapter.projection and inside[3] == "ip_image_proj"
        attn = unet.get_submodule(next(iter(inside[1])))
        assert attn.to_q.base is before[1][next(iter(inside[1]))][0]  # the LoRA wraps the shared projection
    assert _same_state(_unet_state(unet), before)
    with pytest.raises(RuntimeError, match="boom"), adapter.attached():
        raise RuntimeError("boom")
    assert _same_state(_unet_state(unet), before)


def test_same_result_as_diffusers_own_faceid_loading(sdxl_dir, adapter_dir, adapter):
    """diffusers loads the file's LoRA as a peft adapter on the UNet; the wrappers here must compute
    exactly the same thing (and the LoRA must matter)."""
    theirs = load_pipeline(str(sdxl_dir)).text2img
    subfolder, weight_name = FACEID_FILES["sdxl"]
    theirs.load_ip_adapter(str(adapter_dir), subfolder=subfolder, weight_name=weight_name, image_encoder_folder=None,
                           local_files_only=True)
    assert theirs.get_active_adapters() == ["faceid_0"]
    theirs.set_ip_adapter_scale(0.7)
    embeds = adapter.image_embeds(_embedding(0), 5.0)
    expected = _t2i(theirs, ip_adapter_image_embeds=embeds)
    np.testing.assert_allclose(_face(adapter, 0.7), expected, atol=1e-5)
    theirs.disable_lora()
    assert np.abs(_t2i(theirs, ip_adapter_image_embeds=embeds) - expected).max() > 1e-3


def test_strength_and_identity_change_the_output_and_plain_calls_still_work(pipes, adapter):
    base = pipes.text2img
    plain = _t2i(base)
    full = _face(adapter, 1.0)
    assert full.shape == (1, 128, 128, 3)
    np.testing.assert_array_equal(full, _face(adapter, 1.0))  # deterministic
    assert np.abs(full - _face(adapter, 0.2)).max() > 1e-3  # the scale is applied
    assert np.abs(full - _face(adapter, 1.0, seed=1)).max() > 1e-3  # the identity is read
    np.testing.assert_array_equal(_t2i(base), plain)  # text2img on the shared UNet: as before the face calls
    out = pipes.img2img(prompt="a cat", image=plain[0], strength=0.5, num_inference_steps=2, output_type="np").images
    assert out.shape == (1, 128, 128, 3)


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0], ids=["cfg", "no-cfg"])
def test_embeds_with_and_without_guidance_and_a_batch(pipes, adapter, guidance_scale):
    embeds = adapter.image_embeds(_embedding(0), guidance_scale)
    assert len(embeds) == 1
    cfg = uses_cfg(adapter.pipe, guidance_scale)
    assert cfg == (guidance_scale > 1)
    assert embeds[0].shape == ((2, 1, 512) if cfg else (1, 1, 512))  # not repeated per image: the pipeline does it
    assert embeds[0].dtype == pipes.text2img.unet.dtype
    if cfg:
        assert torch.count_nonzero(embeds[0][0]) == 0  # the unconditional identity is zeros
    images = _face(adapter, 0.8, guidance_scale=guidance_scale, num_images_per_prompt=2, height=64, width=96)
    assert images.shape == (2, 64, 96, 3)
    assert np.abs(images[0] - images[1]).max() > 1e-3  # two seeds, two images


def test_embedding_checks(pipes):
    with pytest.raises(ValueError, match="512"):
        identity_embeds(np.ones(128, np.float32), pipes.text2img, 5.0, embed_dim=512)
    with pytest.raises(ValueError, match="finite"):
        identity_embeds(np.full(512, np.nan, np.float32), pipes.text2img, 5.0)


def test_refuses_what_it_cannot_load(pipes, adapter_dir, tmp_path):
    from deployments.pipelines.tiny_conditioned import ip_adapter_state_dict

    with pytest.raises(ValueError, match="SDXL"):
        load_face_adapter(build_sd15(), str(adapter_dir))
    with pytest.raises(FileNotFoundError):
        load_face_adapter(pipes.text2img, str(tmp_path))
    plain = ip_adapter_state_dict(pipes.text2img.unet)  # a plain (CLIP image) IP-Adapter, not FaceID
    torch.save({"image_proj": {k[len("image_proj."):]: v for k, v in plain.items() if k.startswith("image_proj.")},
                "ip_adapter": {k[len("ip_adapter."):]: v for k, v in plain.items() if k.startswith("ip_adapter.")}},
               tmp_path / FACEID_SDXL_WEIGHTS)
    with pytest.raises(ValueError, match="not an IP-Adapter FaceID"):
        load_face_adapter(pipes.text2img, str(tmp_path))
    broken = faceid_state_dict(pipes.text2img.unet)
    broken["ip_adapter"]["99.to_q_lora.down.weight"] = torch.zeros(4, 8)
    broken["ip_adapter"]["99.to_q_lora.up.weight"] = torch.zeros(8, 4)
    torch.save(broken, tmp_path / FACEID_SDXL_WEIGHTS)
    with pytest.raises(ValueError, match="match no attention"):
        load_face_adapter(pipes.text2img, str(tmp_path))
    assert pipes.text2img.unet.encoder_hid_proj is None
