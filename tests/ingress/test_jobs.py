import asyncio
import base64
import io

import pytest
from PIL import Image

from ingress.contract.errors import ValidationFailed
from ingress.contract.schemas.generation import ImageToImageRequest, TextToImageRequest
from ingress.inputs import FetchLimits
from ingress.inputs.decoding import ImageLoader
from ingress.jobs import build_job, redact, webhook_fingerprint
from ingress.wiring.registry import AppConfig


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
    job = asyncio.run(build_job(app, TextToImageRequest(app_id="ap-t"), "ten", "rid", ImageLoader(FetchLimits())))
    assert (job.height, job.width, job.num_inference_steps, job.guidance_scale) == (768, 640, 12, 5)
    assert job.prompt == "a beautiful painting" and job.tenant == "ten"


def test_image_job_fits_large_inputs_and_honours_explicit_size():
    job = asyncio.run(build_job(APP, ImageToImageRequest(app_id="ap-x", image=_b64((2000, 1000))), "t", "r",
                                ImageLoader(FetchLimits())))
    assert job.image.size == (1536, 768) and (job.width, job.height) == (1536, 768)
    assert job.strength == 0.7
    job = asyncio.run(build_job(APP, ImageToImageRequest(app_id="ap-x", image=_b64((300, 200)), width=512,
                                                         height=256), "t", "r", ImageLoader(FetchLimits())))
    assert job.image.size == (512, 256)


SDXL = AppConfig(app_id="ap-xl", name="xl", family="f", task="img2img", inference_types=["a10g"],
                 limits={"height": {"min": 512, "max": 1536}, "width": {"min": 512, "max": 1536}})


def _job(app, size, **kw):
    return asyncio.run(build_job(app, ImageToImageRequest(app_id=app.app_id, image=_b64(size), **kw), "t", "r",
                                 ImageLoader(FetchLimits())))


def test_one_side_given_derives_the_other_within_the_apps_range():
    job = _job(APP, (300, 200), width=768)
    assert job.image.size == (768, 512)


def test_one_side_given_whose_derived_side_is_out_of_range_is_a_422_naming_it():
    with pytest.raises(ValidationFailed) as info:
        _job(APP, (6000, 100), height=1536)  # would be 92160 wide
    message = info.value.message
    assert message.startswith("width:") and "92160" in message and "allowed: 256..1536" in message
    with pytest.raises(ValidationFailed) as info:
        _job(APP, (6000, 100), width=512)  # would be 64 high
    assert info.value.message.startswith("height:") and "allowed: 256..1536" in info.value.message


def test_without_sizes_the_input_is_fitted_inside_the_apps_ranges():
    assert _job(APP, (200, 200)).image.size == (256, 256)  # scaled up to the minimum
    assert _job(SDXL, (600, 600)).image.size == (576, 576)  # rounded down to a multiple of 64
    assert _job(SDXL, (400, 300)).image.size == (640, 512)  # up, aspect kept
    assert _job(APP, (1536, 256)).image.size == (1536, 256)  # 6:1 is the most 256..1536 can keep
    with pytest.raises(ValidationFailed) as info:
        _job(APP, (6000, 100))
    assert info.value.message.startswith("image:") and "width 256..1536, height 256..1536" in info.value.message


def test_redact_replaces_webhook_urls_entirely_and_drops_user_info():
    secret_url = "https://hooks.example.com/T0/B1/very-secret-token"
    echo = redact(ImageToImageRequest(app_id="ap-x", webhook=secret_url,
                                      image="https://user:pw@h.example/a.png?token=abc&w=2"))
    assert echo["webhook"] == webhook_fingerprint(secret_url)
    assert echo["webhook"].startswith("redacted:sha256:") and "secret" not in echo["webhook"]
    assert webhook_fingerprint(secret_url) != webhook_fingerprint(secret_url + "x")
    assert echo["image"] == "https://h.example/a.png?token=REDACTED&w=2"
    assert redact(ImageToImageRequest(app_id="ap-x", image="http://[2001:db8::1]:8080/a.png"))["image"] == (
        "http://[2001:db8::1]:8080/a.png")


# -- faces, backgrounds and upscaling --------------------------------------------------------

MATTING = AppConfig(app_id="ap-m", name="m", family="f", task="remove_background", inference_types=["a10g"])
UPSCALE = AppConfig(app_id="ap-u", name="u", family="f", task="upscale", inference_types=["a10g"])
AVATAR = AppConfig(app_id="ap-a", name="a", family="f", task="avatar", inference_types=["a10g"],
                   defaults={"height": 768, "width": 512})


def _family(**kw):
    from ingress.wiring.registry import FamilyConfig

    return FamilyConfig(kind="upscaler", model={"path": "x"}, **kw)


def test_matting_job_keeps_the_image_size_and_fills_the_colour():
    job = _job(MATTING, (301, 157), bg_color=True, g_color=0)
    assert type(job).__name__ == "MattingJob" and job.image.size == (301, 157)  # no rounding, no enlarging
    assert job.bg_color == [255, 0, 255] and job.bg_image is None and not job.blur
    job = _job(MATTING, (2000, 1000), bg_color="#0a0B0c", bg_image=_b64((40, 30)))
    assert job.image.size == (1536, 768) and job.bg_color == [10, 11, 12] and job.bg_image.size == (40, 30)


def test_upscale_job_refuses_an_output_over_the_cap_naming_it():
    req = ImageToImageRequest(app_id="ap-u", image=_b64((512, 256)), scale=8)
    job = asyncio.run(build_job(UPSCALE, req, "t", "r", ImageLoader(FetchLimits()), _family(max_output_pixels=4096 * 2048)))
    assert (job.scale, job.image.size) == (8, (512, 256))
    with pytest.raises(ValidationFailed, match=r"scale: a 512x256 image at 8x would be 4096x2048 = 8388608 pixels; "
                                               r"allowed: at most 8388607 output pixels"):
        asyncio.run(build_job(UPSCALE, req, "t", "r", ImageLoader(FetchLimits()), _family(max_output_pixels=4096 * 2048 - 1)))
    job = asyncio.run(build_job(UPSCALE, ImageToImageRequest(app_id="ap-u", image=_b64((33, 17))), "t", "r",
                                ImageLoader(FetchLimits()), _family()))
    assert job.scale == 4 and job.image.size == (33, 17)  # the app's default factor


def test_what_the_header_refuses_costs_no_decoding(monkeypatch):
    """A refused scale, or a size the app cannot take, is known from the image's header: nothing is decoded."""
    async def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before every cheap check passed")

    monkeypatch.setattr(ImageLoader, "decode", no_decoding)
    req = ImageToImageRequest(app_id="ap-u", image=_b64((512, 256)), scale=8)
    with pytest.raises(ValidationFailed, match="^scale: "):
        asyncio.run(build_job(UPSCALE, req, "t", "r", ImageLoader(FetchLimits()), _family(max_output_pixels=4096)))
    with pytest.raises(ValidationFailed, match="^height: "):
        _job(SDXL, (3000, 200), width=1024)


def test_two_inputs_are_decoded_one_after_the_other_each_to_the_size_used():
    sizes: list[tuple[int, int] | None] = []
    real = ImageLoader.decode
    active = 0

    async def tracked(self, image, size=None, *args, **kwargs):
        nonlocal active
        active += 1
        assert active == 1  # never two decodes of one request at once
        sizes.append(size)
        try:
            return await real(self, image, size, *args, **kwargs)
        finally:
            active -= 1

    inpaint = AppConfig(app_id="ap-i", name="i", family="f", task="inpaint", inference_types=["a10g"])
    mask = _b64((2000, 1000))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ImageLoader, "decode", tracked)
        job = asyncio.run(build_job(inpaint, ImageToImageRequest(app_id="ap-i", image=_b64((2000, 1000)),
                                                                 mask_url=mask), "t", "r", ImageLoader(FetchLimits())))
    assert sizes == [(1536, 768), (1536, 768)] and job.image.size == job.mask.size == (1536, 768)
    assert job.mask.mode == "L"


def test_avatar_job_fills_the_gender_word_and_keeps_a_custom_prompt():
    job = _job(AVATAR, (300, 300), gender="female", bg_color="#fff", remove_background=True)
    assert "portrait woman," in job.prompt and "{gender_word}" not in job.prompt
    assert (job.width, job.height) == (512, 768) and job.image.size == (300, 300)  # output size: the app's
    assert job.bg_color == "#FFFFFF" and job.remove_background and job.gender == "female"
    assert "portrait person," in _job(AVATAR, (300, 300)).prompt
    assert _job(AVATAR, (300, 300), prompt="a knight", gender="male").prompt == "a knight"


def test_colour_channels_alone_make_a_colour_background():
    job = _job(MATTING, (50, 40), r_color=10)
    assert job.bg_color == [10, 255, 255]
