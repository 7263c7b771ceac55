"""How the ingress reaches a family deployment: Serve handles, or (for the
plain-uvicorn baseline of ``bench/overhead.py``) a model in process.

Ray's own errors are translated here, once, into the contract's errors.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, Protocol

from deployments.catalog import deployment_name, lora_stack_id
from deployments.errors import HelperUnavailable, JobError, VendorError, new_incident
from deployments.types import Job, Result
from ingress.contract.errors import (
    ModelFailure,
    NoFaceInImage,
    NotFound,
    Overloaded,
    StudioError,
    Timeout,
    UpstreamError,
    ValidationFailed,
    VendorRateLimited,
    VendorUnavailable,
)

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    async def run(self, family: str, gpu: str, job: Job, timeout: float) -> Result:
        """Run ``job`` on the (family, GPU type) deployment; raise contract errors."""


#: A family's 422s by their envelope type.
_INVALID: dict[str, type[ValidationFailed]] = {"ValidationError": ValidationFailed, "NoFaceDetected": NoFaceInImage}


#: ``Retry-After`` when a vendor that refused us gave none.
VENDOR_RETRY_AFTER = 5


def vendor_error(exc: VendorError) -> StudioError:
    """A vendor's failure as the contract's error (``VendorError`` documents the mapping)."""
    retry = max(1, math.ceil(exc.retry_after)) if exc.retry_after else VENDOR_RETRY_AFTER
    if exc.reason == "rate_limited":
        return VendorRateLimited(exc.public, retry)
    if exc.reason == "unavailable":
        return VendorUnavailable(exc.public, retry)
    if exc.reason == "timeout":
        return Timeout(exc.public)
    if exc.reason == "rejected":
        return ValidationFailed(exc.public)
    return UpstreamError(exc.public)


def _job_error(exc: BaseException | None, retry_after: int) -> Exception | None:
    """Map an error raised by the family code to a contract error, by its envelope type.
    ``retry_after`` is the service's ``Retry-After`` for a 503 that carries no hint of its own."""
    if isinstance(exc, VendorError):
        return vendor_error(exc)
    if isinstance(exc, HelperUnavailable):  # a family this one called was busy or gone: nothing ran to the end
        hint = max(1, math.ceil(exc.retry_after)) if exc.retry_after else retry_after
        return Overloaded(exc.public, hint)
    if isinstance(exc, JobError) and exc.error_type == "NotFound":
        return NotFound(exc.public)
    if isinstance(exc, JobError) and exc.error_type in _INVALID:
        return _INVALID[exc.error_type](exc.public)
    if isinstance(exc, JobError) and exc.error_type == "ModelError":
        return ModelFailure(exc.public)  # the detail is in the family's log under the incident
    return None


def classify_ray_error(exc: BaseException) -> str:
    """The one reading of an exception from a family call, for the sync path and the coordinator:

    * ``"overloaded"``: Serve refused the call (queue full, deployment unavailable): it never ran;
    * ``"job"``: the family raised a ``JobError`` (the job's own 422 or model failure);
    * ``"dead"``: the worker's process, node or raylet is known to be gone (it cannot be running);
    * ``"unknown"``: the call broke but the worker may still be running (replica unreachable,
      connection dropped): only its lease can tell;
    * ``"error"``: the worker answered with an exception of its own (a bug).
    """
    from ray import exceptions as ray_errors
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(exc, (BackPressureError, DeploymentUnavailableError)):
        return "overloaded"
    if isinstance(exc, JobError):  # Serve's throughput-optimized transport raises the family's own exception
        return "job"
    dead = (ray_errors.ActorDiedError, ray_errors.WorkerCrashedError, ray_errors.NodeDiedError,
            ray_errors.OutOfMemoryError, ray_errors.LocalRayletDiedError)
    if isinstance(exc, dead):
        return "dead"
    if isinstance(exc, ray_errors.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, JobError):
            return "job"
        if isinstance(cause, dead):
            return "dead"
        return "unknown" if isinstance(cause, ray_errors.RayActorError) else "error"
    return "unknown"  # ActorUnavailableError, a broken gRPC connection, anything else of the transport


def job_cause(exc: BaseException) -> BaseException | None:
    """The family's own error in an exception from a family call: Ray's ``RayTaskError`` wraps it
    as ``cause``; Serve's throughput-optimized transport raises it as it is."""
    return exc if isinstance(exc, JobError) else getattr(exc, "cause", None)


def family_call(handle: Any, job_lora_model: str | None) -> Any:
    """The handle to call for a job: routed by its LoRA stack (Serve model multiplexing)."""
    stack = lora_stack_id(job_lora_model)
    return handle.options(multiplexed_model_id=stack) if stack else handle


class ServeDispatcher:
    """Dispatches through Ray Serve ``DeploymentHandle``s keyed by deployment name."""

    def __init__(self, handles: dict[str, Any], retry_after: int):
        self._handles = handles
        self._retry_after = retry_after

    async def run(self, family: str, gpu: str, job: Job, timeout: float) -> Result:
        name = deployment_name(family, gpu)
        response = family_call(self._handles[name], getattr(job, "lora_model", None)).run.remote(job)
        try:
            return await asyncio.wait_for(response, timeout)
        except TimeoutError:
            response.cancel()
            raise Timeout(f"{name} did not finish within {timeout:g} s") from None
        except Exception as exc:
            raise map_call_error(exc, name, self._retry_after) from None


def map_call_error(exc: BaseException, name: str, retry_after: int) -> Exception:
    """The contract's error for a failed call to deployment ``name`` (see :func:`classify_ray_error`)."""
    kind = classify_ray_error(exc)
    if kind == "overloaded":
        return Overloaded(f"{name} is at capacity or not available; retry later", retry_after)
    mapped = _job_error(job_cause(exc), retry_after) if kind == "job" else None
    if mapped is not None:
        return mapped
    if kind in ("dead", "unknown"):
        return Overloaded(f"a {name} replica stopped while answering; retry", retry_after)
    incident = new_incident()
    log.error("deployment %s failed (incident %s)", name, incident, exc_info=exc)
    return ModelFailure(f"{name} failed while answering (incident {incident})")


async def service_call(response: Any, name: str, timeout: float, retry_after: int) -> Any:
    """Await a call to a service deployment (documents, chat), its errors mapped once."""
    try:
        return await asyncio.wait_for(response, timeout)
    except TimeoutError:
        response.cancel()
        raise Timeout(f"{name} did not answer within {timeout:g} s") from None
    except Exception as exc:
        raise map_call_error(exc, name, retry_after) from None


class InProcessDispatcher:
    """Calls family objects directly (no Serve): the baseline of the overhead benchmark."""

    def __init__(self, families: dict[str, Any], retry_after: int = 2):
        self._families = families
        self._retry_after = retry_after

    async def run(self, family: str, gpu: str, job: Job, timeout: float) -> Result:
        try:
            return await asyncio.wait_for(self._families[deployment_name(family, gpu)].run(job), timeout)
        except TimeoutError:
            raise Timeout(f"did not finish within {timeout:g} s") from None
        except JobError as exc:
            mapped = _job_error(exc, self._retry_after)
            if mapped is None:
                raise
            raise mapped from None
