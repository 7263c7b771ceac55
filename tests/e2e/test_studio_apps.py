"""Faces, backgrounds and upscaling over real HTTP, synchronously and with ``celery: true``:
Face Consistency and Face Avatar (insightface + IP-Adapter FaceID on the sdxl family, the
avatar's background through the background-removal family by handle), Background Removal in
each mode, Replace Background (the matting family's subject mask, SDXL inpainting around it),
and both upscalers. Inputs are synthetic pictures whose subject or faces the tiny models are
built to find, so the checks are on pixels, not only on a file coming back."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from deployments.pipelines.compositing import cutout, on_color
from deployments.pipelines.saliency import SaliencyModel
from deployments.pipelines.tiny_faces import draw_faces
from deployments.pipelines.tiny_saliency import draw_subject
from tests.e2e.test_tasks import wait_for

pytestmark = pytest.mark.e2e

FAST = {"num_inference_steps": 2, "seed": 11, "height": 512, "width": 512}


def _uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _image(url: str) -> Image.Image:
    if url.startswith("data:"):
        data = base64.b64decode(url.split(",", 1)[1])
    else:
        r = httpx.get(url, timeout=30)
        assert r.status_code == 200
        data = r.content
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _run(client, body: dict, celery: bool = False) -> dict:
    r = client.post("/getImageToImage", json={**body, "celery": celery})
    assert r.status_code == 200, r.text
    env = wait_for(client, r.json()["task_id"]) if celery else r.json()
    assert env["status"] == "SUCCESS", env
    return env


def _refused(client, body: dict, status: int = 422) -> dict:
    r = client.post("/getImageToImage", json=body)
    assert r.status_code == status, r.text
    return r.json()


@pytest.fixture(scope="module")
def subject():
    """A red ellipse (the tiny saliency model's subject) on a textured background, 300 x 200."""
    image, mask = draw_subject((300, 200), (60, 40, 220, 170))
    return image, np.asarray(mask) == 255


def _inside(mask: np.ndarray, margin: int = 4) -> np.ndarray:
    """Pixels well inside (True) the mask, away from its soft edge."""
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, iterations=margin)


def _outside(mask: np.ndarray, margin: int = 4) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return ~binary_dilation(mask, iterations=margin)


# -- Background Removal ----------------------------------------------------------------------

def test_background_removal_modes_put_the_right_pixels_where_the_subject_is(client, subject):
    image, mask = subject
    src = np.asarray(image, dtype=np.int16)
    transparent = _image(_run(client, {"app_id": "ap-background-removal", "image": _uri(image)})["output"][0])
    assert transparent.mode == "RGBA" and transparent.size == image.size  # same size: no rounding to 64
    alpha = np.asarray(transparent)[..., 3]
    assert (alpha[_inside(mask)] == 255).all() and (alpha[_outside(mask)] == 0).all()
    iou = ((alpha > 127) & mask).sum() / ((alpha > 127) | mask).sum()
    assert iou > 0.95, iou

    env = _run(client, {"app_id": "ap-background-removal", "image": _uri(image), "bg_color": True,
                        "r_color": 0, "g_color": 255, "b_color": 0})
    colored = np.asarray(_image(env["output"][0]).convert("RGB"), dtype=np.int16)
    assert env["meta"]["mode"] == "color"
    assert (colored[_outside(mask)] == (0, 255, 0)).all()
    assert (colored[_inside(mask)] == src[_inside(mask)]).all()

    backdrop = Image.new("RGB", (40, 30), (250, 240, 10))
    over = np.asarray(_image(_run(client, {"app_id": "ap-background-removal", "image": _uri(image),
                                           "bg_image": _uri(backdrop)})["output"][0]).convert("RGB"), dtype=np.int16)
    assert (over[_outside(mask)] == (250, 240, 10)).all() and (over[_inside(mask)] == src[_inside(mask)]).all()

    blurred = np.asarray(_image(_run(client, {"app_id": "ap-background-removal", "image": _uri(image),
                                              "blur": True})["output"][0]).convert("RGB"), dtype=np.int16)
    assert (blurred[_inside(mask)] == src[_inside(mask)]).all()
    outside = _outside(mask)
    assert np.abs(blurred[outside] - src[outside]).mean() > 3  # the checkered background is smoothed


def test_background_removal_async_keeps_its_background_image(client, subject):
    image, mask = subject
    backdrop = Image.new("RGB", (64, 64), (5, 6, 7))
    env = _run(client, {"app_id": "ap-background-removal", "image": _uri(image), "bg_image": _uri(backdrop)},
               celery=True)
    out = np.asarray(_image(env["output"][0]).convert("RGB"))
    assert (out[_outside(mask)] == (5, 6, 7)).all()


def test_background_removal_refuses_two_backgrounds(client, subject):
    image, _ = subject
    env = _refused(client, {"app_id": "ap-background-removal", "image": _uri(image), "blur": True, "bg_color": True})
    assert env["error"] == "ValidationError" and "bg_color, blur: choose one background" in env["error_data"]
    env = _refused(client, {"app_id": "ap-background-removal", "image": _uri(image), "r_color": 3, "bg_image": _uri(image)})
    assert "bg_image, bg_color: choose one background" in env["error_data"]


# -- Replace Background ----------------------------------------------------------------------

@pytest.mark.parametrize("celery", [False, True])
def test_replace_background_keeps_the_subjects_pixels(client, service, celery):
    from deployments.families.backgrounds import harden

    image, mask_image = draw_subject((512, 512), (150, 100, 360, 420))
    mask = np.asarray(mask_image) == 255
    env = _run(client, {"app_id": "ap-replace-background", "image": _uri(image), "prompt": "a beach at sunset",
                        "num_inference_steps": 2, "seed": 5}, celery)
    out = np.asarray(_image(env["output"][0]).convert("RGB"), dtype=np.int16)
    src = np.asarray(image, dtype=np.int16)
    assert out.shape == src.shape
    # Where the background-removal family's (hardened) mask is solid, the subject is the input, exactly;
    # that is nearly all of the drawn subject (its mask is made at 256 px and scaled up: soft within ~4 px).
    solid = np.asarray(harden(SaliencyModel.load(service.models_dir / "tiny-saliency")(image))) == 255
    assert (solid >= _inside(mask, 4)).all() and not (solid & _outside(mask, 4)).any()
    assert (out[solid] == src[solid]).all()
    background = _outside(mask, 6)
    assert np.abs(out[background] - src[background]).mean() > 10  # a new background
    assert 0.2 < env["meta"]["subject_coverage"] < 0.5


# -- Face Consistency and Face Avatar --------------------------------------------------------

ONE_FACE = draw_faces((512, 512), [(256, 240, 120)])
TWO_FACES = draw_faces((640, 480), [(180, 240, 130), (520, 120, 40, 1)])


@pytest.mark.parametrize("celery", [False, True])
def test_face_consistency_generates_at_the_requested_size_from_the_face(client, celery):
    env = _run(client, {"app_id": "ap-face-consistency", "image": _uri(ONE_FACE), "strength": 0.8, **FAST}, celery)
    out = _image(env["output"][0])
    assert out.size == (512, 512) and env["meta"]["face"]["faces_detected"] == 1
    x1, y1, x2, y2 = env["meta"]["face"]["bbox"]
    assert x1 < 256 < x2 and y1 < 240 < y2


def test_face_consistency_uses_the_largest_of_several_faces(client):
    env = _run(client, {"app_id": "ap-face-consistency", "image": _uri(TWO_FACES), **FAST})
    face = env["meta"]["face"]
    assert face["faces_detected"] == 2
    x1, y1, x2, y2 = face["bbox"]
    assert x1 < 180 < x2 and y1 < 240 < y2  # the big face on the left, not the small one


def test_no_face_is_a_422_of_its_own_sync_and_async(client):
    plain = Image.new("RGB", (256, 256), (40, 60, 120))
    env = _refused(client, {"app_id": "ap-face-consistency", "image": _uri(plain), **FAST})
    assert env["error"] == "NoFaceDetected" and "no face" in env["error_data"]
    r = client.post("/getImageToImage", json={"app_id": "ap-face-avatar", "image": _uri(plain), "celery": True, **FAST})
    assert r.status_code == 200, r.text
    env = wait_for(client, r.json()["task_id"])
    assert env["status"] == "FAILURE" and env["error"] == "NoFaceDetected", env


def test_face_avatar_background_is_the_matting_familys_mask_of_the_generated_image(client, service):
    body = {"app_id": "ap-face-avatar", "image": _uri(ONE_FACE), "gender": "female", **FAST}
    plain = _run(client, body)
    generated = _image(plain["output"][0]).convert("RGB")
    mask = SaliencyModel.load(service.models_dir / "tiny-saliency")(generated)

    clear = _image(_run(client, {**body, "remove_background": True})["output"][0])
    assert clear.mode == "RGBA"
    expected = np.asarray(cutout(generated, mask), dtype=np.int16)
    assert np.abs(np.asarray(clear, dtype=np.int16) - expected).max() <= 1

    env = _run(client, {**body, "bg_color": "#00FF00"}, celery=True)
    colored = _image(env["output"][0])
    assert colored.mode == "RGB" and env["meta"]["background"] == "#00FF00"
    expected = np.asarray(on_color(generated, mask, (0, 255, 0)), dtype=np.int16)
    assert np.abs(np.asarray(colored, dtype=np.int16) - expected).max() <= 1


# -- Upscaling -------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [2, 4, 8])
def test_upscale_output_sizes(client, scale):
    small = draw_subject((40, 30), (5, 5, 30, 25))[0]
    env = _run(client, {"app_id": "ap-upscale", "image": _uri(small), "scale": scale})
    assert _image(env["output"][0]).size == (40 * scale, 30 * scale)
    assert env["meta"]["scale"] == scale


def test_upscale_async_default_scale_and_the_output_cap(client):
    small = draw_subject((37, 23), (5, 5, 30, 20))[0]
    env = _run(client, {"app_id": "ap-upscale", "image": _uri(small)}, celery=True)
    assert _image(env["output"][0]).size == (37 * 4, 23 * 4)
    too_big = Image.new("RGB", (700, 400), (9, 9, 9))  # 8x: 5600 x 3200 = 17.9 MP
    env = _refused(client, {"app_id": "ap-upscale", "image": _uri(too_big), "scale": 8})
    assert "scale: a 700x400 image at 8x would be 5600x3200 = 17920000 pixels; allowed: at most 16777216" \
        in env["error_data"]
    r = client.post("/getImageToImage", json={"app_id": "ap-upscale", "image": _uri(too_big), "scale": 8,
                                              "celery": True})
    assert r.status_code == 422  # refused at submit, never queued


def test_sd_x4_upscaler(client):
    small = draw_subject((64, 48), (10, 10, 50, 40))[0]
    env = _run(client, {"app_id": "ap-upscale-sd-x4", "image": _uri(small), "num_inference_steps": 2, "seed": 1})
    assert _image(env["output"][0]).size == (256, 192)
    env = _refused(client, {"app_id": "ap-upscale-sd-x4", "image": _uri(small), "scale": 2})
    assert "makes 4x only; allowed: 4" in env["error_data"]


def test_two_requests_at_once_each_get_their_own_result(client, subject):
    """A Replace Background (which calls the background-removal deployment by handle) and a
    Background Removal at the same moment: both succeed, each with its own image's result."""
    from concurrent.futures import ThreadPoolExecutor

    image, mask = subject
    other, other_mask = draw_subject((300, 200), (20, 20, 120, 120))
    bodies = [{"app_id": "ap-background-removal", "image": _uri(image)},
              {"app_id": "ap-background-removal", "image": _uri(other)},
              {"app_id": "ap-replace-background", "image": _uri(image), "num_inference_steps": 2, "seed": 2}]
    with ThreadPoolExecutor(len(bodies)) as pool:
        envs = list(pool.map(lambda body: _run(client, body), bodies))
    for env, expected in zip(envs[:2], (mask, np.asarray(other_mask) == 255)):
        alpha = np.asarray(_image(env["output"][0]))[..., 3]
        assert (alpha[_inside(expected)] == 255).all() and (alpha[_outside(expected)] == 0).all()
    assert _image(envs[2]["output"][0]).size == (768, 512)  # 300x200 scaled into SDXL's 512..1536, multiples of 64
