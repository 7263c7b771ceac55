"""Response schema of `GET get-status`: the service's health, per family deployment."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

#: A family deployment's state: ``ready`` (a replica runs), ``scaled_to_zero`` (no replica, none
#: wanted: the autoscaler starts one on the next request), ``starting`` (replicas wanted, none
#: running yet), ``unhealthy`` (none running and Serve reports it failed, or it is missing).
DeploymentState = Literal["ready", "scaled_to_zero", "starting", "unhealthy"]

#: ``ready``: every family deployment can take work (200). ``degraded``: at least one cannot (503).
#: ``unknown``: Serve's state could not be read (503).
ServiceState = Literal["ready", "degraded", "unknown"]


class DeploymentHealth(BaseModel):
    """One family deployment, as Ray Serve sees it."""

    family: str = Field(description="The model family (the registry's `families` key), or the service "
                        "(`chat`, `documents`).")
    gpu: str = Field(description="The GPU type it runs on (an `inference_type`); empty for a service.")
    status: DeploymentState = Field(
        description="`ready`: a replica runs. `scaled_to_zero`: no replica and none wanted; the autoscaler starts "
        "one on the next request (counts as available). `starting`: replicas wanted, none running yet (available "
        "when the deployment scales from zero). `unhealthy`: none running and Serve reports a failure."
    )
    replicas: int = Field(ge=0, description="Replicas running now.")
    target: int = Field(ge=0, description="Replicas Serve wants (the autoscaler's current target).")
    available: bool = Field(description="Whether it can take work now (a request may wait for a replica to start).")


class Health(BaseModel):
    """`GET get-status`: 200 when every family deployment can take work, 503 otherwise."""

    status: ServiceState = Field(
        description="`ready` (200): every family deployment is available. `degraded` (503): at least one is not. "
        "`unknown` (503): the state of the deployments could not be read."
    )
    deployments: dict[str, DeploymentHealth] = Field(
        description="Per family deployment (`<family>-<gpu>`); empty when `status` is `unknown`."
    )
