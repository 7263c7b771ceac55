"""Replace Background on a diffusion family replica in process (tiny SDXL), with the
background-removal family (tiny designed saliency model) wired in as its helper the way
Serve wires a handle: the subject's pixels survive exactly, the background is new, and a
failure of the helper reaches the job as its own error."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from deployments.errors import InvalidJobError, ModelError
from deployments.families.diffusion import DiffusionFamily
from deployments.families.matting import MattingFamily
from deployments.pipelines.tiny_saliency import draw_subject, write_tiny_saliency
from deployments.types import ImageJob
from tests.deployments.conftest import MemoryStore

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


class _Method:
    def __init__(self, fn):
        self.fn = fn
        self.calls = 0

    def remote(self, *args):
        self.calls += 1
        return asyncio.ensure_future(self.fn(*args))


class _Handle:
    """What ``FamilyBase.call_helper`` needs of a Serve handle: ``handle.<method>.remote(...)``, awaitable."""

    def __init__(self, family):
        self.mask = _Method(family.mask)


@pytest.fixture(scope="module")
def matting(tmp_path_factory):
    return MattingFamily(str(write_tiny_saliency(tmp_path_factory.mktemp("saliency"))), store=MemoryStore())


@pytest.fixture(scope="module")
def family(tiny_models, matting):
    return DiffusionFamily(str(tiny_models["tiny-sdxl"]), store=MemoryStore(), family="sdxl", gpu="a100",
                           tasks=["text2img", "replace_background"], helpers={"matting": _Handle(matting)})


def _job(image, **kw) -> ImageJob:
    return ImageJob(task="replace_background", tenant="t", request_id="r", prompt="a beach", image=image,
                    num_inference_steps=2, seed=1, return_bytes=True, **kw)


def _png(output) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(output.data)).convert("RGB"), dtype=np.int16)


def test_the_subject_is_kept_exactly_and_the_background_is_new(family):
    from scipy.ndimage import binary_dilation, binary_erosion

    image, mask_image = draw_subject((256, 192), (60, 30, 200, 170))
    mask = np.asarray(mask_image) == 255
    result = asyncio.run(family.run(_job(image, batch=2)))
    src = np.asarray(image, dtype=np.int16)
    assert len(result.outputs) == 2 and 0.3 < result.meta["subject_coverage"] < 0.6
    inside, outside = binary_erosion(mask, iterations=2), ~binary_dilation(mask, iterations=6)
    for output in result.outputs:
        out = _png(output)
        assert out.shape == src.shape
        assert (out[inside] == src[inside]).all()
        assert np.abs(out[outside] - src[outside]).mean() > 10
    assert family.helpers["matting"].mask.calls >= 1


def test_without_a_subject_everything_is_repainted(family):
    from PIL import Image

    plain = Image.new("RGB", (128, 128), (30, 120, 200))  # nothing the saliency model calls a subject
    result = asyncio.run(family.run(_job(plain)))
    assert result.meta["subject_coverage"] < 0.01
    assert np.abs(_png(result.outputs[0]) - np.asarray(plain, dtype=np.int16)).mean() > 10


def test_a_helper_refusal_is_the_jobs_own_error_and_a_broken_helper_a_model_error(tiny_models, matting):
    async def refuse(image):
        raise InvalidJobError("image", "too large for the background-removal model")

    async def crash(image):
        raise RuntimeError("replica gone")

    image, _ = draw_subject((128, 128), (20, 20, 100, 100))
    for fn, error in ((refuse, InvalidJobError), (crash, ModelError)):
        handle = _Handle(matting)
        handle.mask = _Method(fn)
        broken = DiffusionFamily(str(tiny_models["tiny-sdxl"]), store=MemoryStore(), family="sdxl", gpu="a100",
                                 tasks=["replace_background"], helpers={"matting": handle})
        with pytest.raises(error):
            asyncio.run(broken.run(_job(image)))


def test_no_helper_wired_fails_the_job_not_the_replica(tiny_models):
    lonely = DiffusionFamily(str(tiny_models["tiny-sdxl"]), store=MemoryStore(), family="sdxl", gpu="a100",
                             tasks=["replace_background"])
    image, _ = draw_subject((128, 128), (20, 20, 100, 100))
    with pytest.raises(ModelError):
        asyncio.run(lonely.run(_job(image)))
