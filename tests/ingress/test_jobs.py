import asyncio
import base64
import io

from PIL import Image

from ingress.inputs import FetchLimits
from ingress.jobs import build_job, redact
from ingress.registry import AppConfig
from ingress.schemas.generation import ImageToImageRequest, TextToImageRequest


def _b64(size):
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


APP = AppConfig(app_id="ap-x", name="x", family="f", task="img2img", inference_types=["a10g"])


def test_redact_masks_secrets_and_inline_images():
    req = ImageToImageRequest(app_id="ap-x", image="https://h.example/a.png?X-Amz-Signature=abc&size=2")
    echo = redact(req)
    assert "abc" not in echo["image"] and "size=2" in echo["image"]
    echo = redact(ImageToImageRequest(app_id="ap-x", image=_b64((64, 64))))
    assert echo["image"].startswith("<inline image")


def test_text_job_takes_app_defaults():
    app = AppConfig(app_id="ap-t", name="t", family="f", task="text2img", inference_types=["a10g"],
                    defaults={"height": 768, "width": 640, "num_inference_steps": 12, "guidance_scale": 5})
    job = asyncio.run(build_job(app, TextToImageRequest(app_id="ap-t"), "ten", "rid", FetchLimits()))
    assert (job.height, job.width, job.num_inference_steps, job.guidance_scale) == (768, 640, 12, 5)
    assert job.prompt == "a beautiful painting" and job.tenant == "ten"


def test_image_job_fits_large_inputs_and_honours_explicit_size():
    job = asyncio.run(build_job(APP, ImageToImageRequest(app_id="ap-x", image=_b64((2000, 1000))), "t", "r",
                                FetchLimits()))
    assert job.image.size == (1536, 768) and (job.width, job.height) == (1536, 768)
    assert job.strength == 0.7
    job = asyncio.run(build_job(APP, ImageToImageRequest(app_id="ap-x", image=_b64((300, 200)), width=512,
                                                         height=256), "t", "r", FetchLimits()))
    assert job.image.size == (512, 256)
