"""The sync path maps a family's errors once, whichever way Serve's transport delivers them:
wrapped in Ray's ``RayTaskError`` (``cause``) or raised as they are (throughput-optimized mode)."""

from __future__ import annotations

import asyncio

import pytest
from ray import exceptions as ray_errors

from deployments.errors import InvalidJobError, ModelError, NoFaceDetected
from deployments.types import ImageJob
from ingress.contract.errors import ModelFailure, NoFaceInImage, Overloaded, ValidationFailed
from ingress.dispatch import ServeDispatcher


class _Response:
    def __init__(self, exc: BaseException):
        self.exc = exc

    def __await__(self):
        raise self.exc
        yield  # pragma: no cover

    def cancel(self) -> None:
        pass


class _Handle:
    def __init__(self, exc: BaseException):
        self.exc = exc
        self.run = self

    def remote(self, job):
        return _Response(self.exc)


def _run(exc: BaseException):
    dispatcher = ServeDispatcher({"sdxl-a100": _Handle(exc)}, retry_after=3)
    job = ImageJob(task="face", tenant="t", request_id="r")
    return asyncio.run(dispatcher.run("sdxl", "a100", job, timeout=5))


@pytest.mark.parametrize("wrap", [lambda e: e, lambda e: ray_errors.RayTaskError("run", "tb", e).as_instanceof_cause()])
@pytest.mark.parametrize("raised,expected,error_type", [
    (NoFaceDetected(), NoFaceInImage, "NoFaceDetected"),
    (InvalidJobError("seed", "too big"), ValidationFailed, "ValidationError"),
    (ModelError("boom", "abc123"), ModelFailure, "ModelError"),
])
def test_family_errors_keep_their_type_raw_or_wrapped(wrap, raised, expected, error_type):
    with pytest.raises(expected) as exc:
        _run(wrap(raised))
    assert exc.value.error_type == error_type
    assert "boom" not in exc.value.message  # a model error's detail stays in the family's log


def test_a_dead_replica_is_a_retryable_503():
    with pytest.raises(Overloaded) as exc:
        _run(ray_errors.ActorDiedError())
    assert exc.value.headers == {"Retry-After": "3"}


@pytest.mark.parametrize(("reason", "retry_after", "error", "status", "header"), [
    ("rate_limited", 7.2, "VendorRateLimited", 429, "8"),
    ("rate_limited", None, "VendorRateLimited", 429, "5"),
    ("unavailable", 2, "VendorUnavailable", 503, "2"),
    ("timeout", None, "Timeout", 504, None),
    ("credentials", None, "UpstreamError", 502, None),
    ("rejected", None, "ValidationError", 422, None),
])
def test_vendor_errors_map_once_with_the_vendors_retry_after(reason, retry_after, error, status, header):
    from deployments.errors import VendorError
    from ingress.dispatch import service_call

    exc = VendorError("OpenAI", reason, "too long" if reason == "rejected" else "", retry_after)
    for raised in (exc, ray_errors.RayTaskError("chat", "tb", exc)):  # unwrapped, and as Ray wraps it
        with pytest.raises(Exception) as info:
            asyncio.run(service_call(_Response(raised), "chat", 5, 3))
        mapped = info.value
        assert (mapped.error_type, mapped.status_code) == (error, status)
        assert (mapped.headers or {}).get("Retry-After") == header
        assert mapped.message.startswith("OpenAI ")


def test_another_tenants_document_is_a_404():
    from deployments.errors import DocumentNotFound
    from ingress.contract.errors import NotFound
    from ingress.dispatch import service_call

    with pytest.raises(NotFound) as info:
        asyncio.run(service_call(_Response(DocumentNotFound("pdf_references[0]")), "chat", 5, 3))
    assert info.value.message == "pdf_references[0]: no such document"


@pytest.mark.parametrize("wrap", [lambda e: e, lambda e: ray_errors.RayTaskError("run", "tb", e).as_instanceof_cause()])
@pytest.mark.parametrize(("hint", "header"), [(None, "3"), (7.5, "8")])
def test_a_busy_helper_family_is_a_503_with_retry_after(wrap, hint, header):
    """Replace Background / Face Avatar whose background remover was busy or gone: Overloaded, not a 500."""
    from deployments.errors import HelperUnavailable
    from ingress.dispatch import InProcessDispatcher

    with pytest.raises(Overloaded) as exc:
        _run(wrap(HelperUnavailable("matting", "busy", hint)))
    assert (exc.value.error_type, exc.value.status_code) == ("Overloaded", 503)
    assert exc.value.headers == {"Retry-After": header} and "retry later" in exc.value.message

    class _Family:
        async def run(self, job):
            raise HelperUnavailable("matting", "busy", hint)

    with pytest.raises(Overloaded) as exc:  # the in-process baseline maps it the same way
        asyncio.run(InProcessDispatcher({"sdxl-a100": _Family()}, retry_after=3).run(
            "sdxl", "a100", ImageJob(task="avatar", tenant="t", request_id="r"), timeout=5))
    assert exc.value.headers == {"Retry-After": header}


def test_a_sync_timeout_cancels_the_family_call():
    """The ingress gives up at its sync timeout and cancels the call, so Serve cancels the replica's
    ``run`` (which stops its job at the next step: tests/deployments/families/test_base.py)."""
    from ingress.contract.errors import Timeout

    class _Pending:
        cancelled = False

        def __await__(self):
            yield from asyncio.sleep(60).__await__()

        def cancel(self):
            self.cancelled = True

    response = _Pending()
    handle = type("H", (), {"remote": lambda self, job: response})()
    handle.run = handle
    dispatcher = ServeDispatcher({"sd15-a10g": handle}, retry_after=3)
    with pytest.raises(Timeout):
        asyncio.run(dispatcher.run("sd15", "a10g", ImageJob(task="text2img", tenant="t", request_id="r"), timeout=0.05))
    assert response.cancelled
