"""How the ingress reaches a family deployment: Serve handles, or (for the
plain-uvicorn baseline of ``bench/overhead.py``) a model in process.

Ray's own errors are translated here, once, into the contract's errors.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from deployments.catalog import deployment_name
from deployments.errors import InvalidJobError, ModelError, new_incident
from deployments.types import Job, Result
from ingress.contract.errors import ModelFailure, Overloaded, Timeout, ValidationFailed

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    async def run(self, family: str, gpu: str, job: Job, timeout: float) -> Result:
        """Run ``job`` on the (family, GPU type) deployment; raise contract errors."""


def _job_error(exc: BaseException) -> Exception | None:
    """Map an error raised by the family code to a contract error."""
    if isinstance(exc, InvalidJobError):
        return ValidationFailed(f"{exc.field}: {exc.message}")
    if isinstance(exc, ModelError):
        return ModelFailure(exc.public)  # the detail is in the family's log under the incident
    return None


class ServeDispatcher:
    """Dispatches through Ray Serve ``DeploymentHandle``s keyed by deployment name."""

    def __init__(self, handles: dict[str, Any], retry_after: int):
        self._handles = handles
        self._retry_after = retry_after

    async def run(self, family: str, gpu: str, job: Job, timeout: float) -> Result:
        from ray import exceptions as ray_errors
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        name = deployment_name(family, gpu)
        response = self._handles[name].run.remote(job)
        try:
            return await asyncio.wait_for(response, timeout)
        except TimeoutError:
            response.cancel()
            raise Timeout(f"{name} did not finish within {timeout:g} s") from None
        except BackPressureError:
            raise Overloaded(f"{name} is at capacity; retry later", self._retry_after) from None
        except DeploymentUnavailableError:
            raise Overloaded(f"{name} is not available right now; retry later", self._retry_after) from None
        except ray_errors.RayTaskError as exc:
            mapped = _job_error(exc.cause) if exc.cause is not None else None
            if mapped is not None:
                raise mapped from None
            incident = new_incident()
            log.exception("family deployment %s failed (incident %s)", name, incident)
            raise ModelFailure(f"{name} failed while running the job (incident {incident})") from None
        except (ray_errors.ActorDiedError, ray_errors.ActorUnavailableError, ray_errors.RayActorError):
            raise Overloaded(f"a {name} replica stopped while running the job; retry", self._retry_after) from None


class InProcessDispatcher:
    """Calls family objects directly (no Serve): the baseline of the overhead benchmark."""

    def __init__(self, families: dict[str, Any]):
        self._families = families

    async def run(self, family: str, gpu: str, job: Job, timeout: float) -> Result:
        try:
            return await asyncio.wait_for(self._families[deployment_name(family, gpu)].run(job), timeout)
        except TimeoutError:
            raise Timeout(f"did not finish within {timeout:g} s") from None
        except (InvalidJobError, ModelError) as exc:
            raise _job_error(exc) from None
