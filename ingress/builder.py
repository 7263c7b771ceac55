"""``import_path: ingress.builder:build_app`` — config in, Serve application out.

The builder validates ``args`` into :class:`ServiceConfig`, binds one family
deployment per (family, GPU type) that an app uses, pinned to its GPU type by a
custom resource, the one-replica task coordinator, and the ingress with their
handles.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from deployments.diffusion import DiffusionFamily
from ingress.coordinator import TaskCoordinator
from ingress.deployment import StudioIngress
from ingress.registry import ServiceConfig, deployment_name

FAMILY_CLASSES = {"diffusion": DiffusionFamily}


def family_deployments(config: ServiceConfig) -> dict[str, Application]:
    """One bound family deployment per (family, GPU type), keyed by deployment name."""
    models_dir = config.models_path()
    bound: dict[str, Application] = {}
    for family_name, gpu in config.deployment_keys():
        family = config.families[family_name]
        name = deployment_name(family_name, gpu)
        options = family.options_for(gpu).serve_options()
        deployment = serve.deployment(
            FAMILY_CLASSES[family.kind],
            name=name,
            ray_actor_options=config.gpu_pools[gpu].actor_options(),
            **options,
        )
        bound[name] = deployment.bind(
            family.model.resolve(models_dir),
            revision=family.model.revision,
            dtype=family.model.dtype,
            family=family_name,
            gpu=gpu,
        )
    return bound


def build_app(args: dict[str, Any]) -> Application:
    """Serve's application builder: ``args`` is the registry from serve_config.yaml."""
    config = ServiceConfig.model_validate(args)
    families = family_deployments(config)
    coordinator = serve.deployment(
        TaskCoordinator,
        name="tasks",
        num_replicas=1,
        max_ongoing_requests=1000,
        health_check_period_s=2,
        ray_actor_options={"num_cpus": 0},
    ).bind(config.model_dump(mode="json"), families)
    ingress = serve.deployment(
        serve.ingress()(StudioIngress),
        name="ingress",
        ray_actor_options={"num_cpus": 0},
        **config.ingress.serve_options(),
    )
    return ingress.bind(config.model_dump(mode="json"), families, coordinator)
