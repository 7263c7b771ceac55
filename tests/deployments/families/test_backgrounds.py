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


@pytest.fixture(scope="module")
def avatar_family(tiny_models, matting):
    components = {"face_analysis": str(tiny_models["tiny-face-pack"]), "face_adapter": str(tiny_models["tiny-faceid-sdxl"])}
    return DiffusionFamily(str(tiny_models["tiny-sdxl"]), store=MemoryStore(), family="sdxl", gpu="a100",
                           tasks=["face", "avatar"], components=components, helpers={"matting": _Handle(matting)})


def _avatar(**kw) -> ImageJob:
    from deployments.pipelines.tiny_faces import draw_faces

    base = {"task": "avatar", "tenant": "t", "request_id": "r", "prompt": "an avatar", "num_inference_steps": 2,
            "seed": 4, "height": 256, "width": 256, "strength": 0.8, "return_bytes": True,
            "image": draw_faces((256, 256), [(128, 120, 70)])}
    return ImageJob(**{**base, **kw})


def test_avatar_background_is_the_helpers_mask_of_the_generated_image(avatar_family, matting):
    import io

    from PIL import Image

    from deployments.pipelines.compositing import cutout, on_color

    plain = asyncio.run(avatar_family.run(_avatar()))
    generated = Image.open(io.BytesIO(plain.outputs[0].data)).convert("RGB")
    assert generated.size == (256, 256) and plain.meta["face"]["faces_detected"] == 1 and "background" not in plain.meta
    mask = matting.model(generated)

    clear = asyncio.run(avatar_family.run(_avatar(remove_background=True)))
    out = Image.open(io.BytesIO(clear.outputs[0].data))
    assert out.mode == "RGBA" and clear.meta["background"] == "transparent"
    assert np.abs(np.asarray(out, dtype=np.int16) - np.asarray(cutout(generated, mask), dtype=np.int16)).max() <= 1

    colored = asyncio.run(avatar_family.run(_avatar(remove_background=True, bg_color="#FF0000", batch=2)))
    assert colored.meta["background"] == "#FF0000" and len(colored.outputs) == 2
    out = Image.open(io.BytesIO(colored.outputs[0].data))
    assert out.mode == "RGB"
    expected = np.asarray(on_color(generated, mask, (255, 0, 0)), dtype=np.int16)
    diff = np.abs(np.asarray(out, dtype=np.int16) - expected)
    assert diff.max() <= 3  # image 0 of a batch of 2 vs a single run: batched kernels round a level or two apart


def test_face_output_size_comes_from_the_job_and_no_face_is_its_own_error(avatar_family):
    from PIL import Image

    from deployments.errors import NoFaceDetected

    result = asyncio.run(avatar_family.run(_avatar(task="face", height=320, width=192)))
    assert (result.meta["width"], result.meta["height"]) == (192, 320)
    with pytest.raises(NoFaceDetected) as exc:
        asyncio.run(avatar_family.run(_avatar(task="face", image=Image.new("RGB", (200, 200), (40, 60, 120)))))
    assert exc.value.error_type == "NoFaceDetected"
    with pytest.raises(InvalidJobError, match="height"):
        asyncio.run(avatar_family.run(_avatar(task="face", height=300)))  # not a multiple of 8


def test_hardening_makes_a_nearly_solid_interior_solid():
    from PIL import Image

    from deployments.families.backgrounds import CLEAR, SOLID, harden

    levels = Image.frombytes("L", (256, 1), bytes(range(256)))
    out = list(harden(levels).getdata())
    assert out[SOLID:] == [255] * (256 - SOLID) and out[:CLEAR + 1] == [0] * (CLEAR + 1)
    assert out == sorted(out) and 100 < out[128] < 155


# -- a busy or dead background remover ------------------------------------------------


def _serve_refusals():
    """What Serve raises to a caller whose helper cannot take the call, as it raises them: a full
    queue, a deployment that failed to deploy, a replica that died (also wrapped in Ray's RayTaskError)."""
    from ray import exceptions as ray_errors
    from ray.serve._private.common import DeploymentID
    from ray.serve.exceptions import DeploymentUnavailableError

    from tests.support.handles import backpressure

    died = ray_errors.ActorDiedError()
    return [("busy", backpressure()), ("unavailable", DeploymentUnavailableError(DeploymentID("rembg", "studio"))),
            ("its replica stopped or cannot be reached", died),
            ("its replica stopped or cannot be reached", ray_errors.RayTaskError("mask", "tb", died))]


def _busy_handle(error):
    from tests.support.handles import Handle, Refused

    responses = []

    def mask(image):
        responses.append(Refused(error))
        return responses[-1]

    return Handle(mask=mask), responses


@pytest.mark.parametrize(("reason", "error"), _serve_refusals(), ids=["backpressure", "unavailable", "died", "wrapped"])
def test_a_busy_or_dead_helper_is_helper_unavailable_not_a_model_error(tiny_models, reason, error):
    from deployments.errors import HelperUnavailable

    handle, _ = _busy_handle(error)
    family = DiffusionFamily(str(tiny_models["tiny-sdxl"]), store=MemoryStore(), family="sdxl", gpu="a100",
                             tasks=["replace_background"], helpers={"matting": handle})
    image, _ = draw_subject((128, 128), (20, 20, 100, 100))
    with pytest.raises(HelperUnavailable) as info:
        asyncio.run(family.run(_job(image)))
    assert info.value.reason == reason and info.value.error_type == "Overloaded"
    assert info.value.kind == "matting" and "retry later" in info.value.public
    assert family.store.objects == {}


def test_a_helper_that_does_not_answer_in_time_is_unavailable_and_its_call_cancelled(tiny_models):
    from deployments.errors import HelperUnavailable
    from tests.support.handles import Handle

    calls = []

    def mask(image):
        calls.append(asyncio.ensure_future(asyncio.sleep(60)))
        return calls[-1]

    family = DiffusionFamily(str(tiny_models["tiny-sdxl"]), store=MemoryStore(), family="sdxl", gpu="a100",
                             tasks=["replace_background"], helpers={"matting": Handle(mask=mask)})
    image, _ = draw_subject((64, 64), (10, 10, 50, 50))

    async def call():
        with pytest.raises(HelperUnavailable, match="no answer within 0.05 s"):
            await family.call_helper("matting", "mask", image, timeout=0.05)
        return calls[0].cancelled()

    assert asyncio.run(call())


def test_avatar_with_a_busy_background_remover_is_helper_unavailable(avatar_family, monkeypatch):
    from deployments.errors import HelperUnavailable
    from tests.support.handles import backpressure

    handle, responses = _busy_handle(backpressure())
    monkeypatch.setitem(avatar_family.helpers, "matting", handle)
    before = set(avatar_family.store.objects)
    with pytest.raises(HelperUnavailable):
        asyncio.run(avatar_family.run(_avatar(remove_background=True, request_id="busy")))
    assert len(responses) == 1 and set(avatar_family.store.objects) == before  # nothing stored


def test_an_async_task_whose_helper_is_busy_is_handed_back_not_failed(tiny_models, tmp_path):
    from deployments.types import TaskRef
    from storage.factory import open_store
    from storage.settings import StorageSettings
    from tests.deployments.test_tasks import dispatched
    from tests.support.handles import backpressure

    handle, responses = _busy_handle(backpressure())
    store = open_store(StorageSettings(backend="local", local_root=tmp_path, signing_secret="s"))
    family = DiffusionFamily(str(tiny_models["tiny-sdxl"]), store=store, family="sdxl", gpu="a100",
                             tasks=["replace_background"], helpers={"matting": handle})
    image, _ = draw_subject((64, 64), (10, 10, 50, 50))
    tid = dispatched(family.tasks, job=_job(image))
    assert asyncio.run(family.run_task(TaskRef("t", tid, 1))) == "retry"
    record = family.tasks.get("t", tid)
    assert record.status == "PENDING" and record.lease_owner == "backoff" and record.error is None
    assert "busy or unavailable" in record.history[-1].note and len(responses) == 1
    assert not record.output_keys
