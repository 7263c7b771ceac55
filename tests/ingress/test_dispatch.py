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
