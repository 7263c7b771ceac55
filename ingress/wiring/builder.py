"""``import_path: ingress.wiring.builder:build_app`` — config in, Serve application out.

The builder validates ``args`` into :class:`ServiceConfig`, binds one family
deployment per (family, GPU type) that an app uses, pinned to its GPU type by a
custom resource, the one-replica task coordinator, and the ingress with their
handles. Each deployment gets its share of the secrets (:mod:`ingress.wiring.secrets`)
in its own ``runtime_env``: the values themselves on the embedded default, only the paths
of its role's secret files in a cluster (``args.secrets_dir``).
"""

from __future__ import annotations

import importlib
from typing import Any

from ray import serve
from ray.serve import Application

from deployments.autoscaling import POLICY_PATH
from deployments.catalog import KINDS, deployment_name
from deployments.chat.service import ChatService
from deployments.documents.service import DocumentStore
from ingress.tasks.coordinator import TaskCoordinator
from ingress.wiring.deployment import StudioIngress
from ingress.wiring.registry import ServiceConfig
from ingress.wiring.secrets import SECRETS_DIR_ARG, SecretRouting, Secrets, routing


def family_class(kind: str) -> type:
    """The deployment class that serves a family kind (``deployments.catalog.KINDS``)."""
    module, _, name = KINDS[kind].deployment.partition(":")
    return getattr(importlib.import_module(module), name)


#: The ingress decodes user images (ingress.inputs.decoding): glibc serves large allocations from mmap at a fixed
#: threshold, so the memory of a decoded picture goes back to the system when it is freed instead of staying in
#: a thread's malloc arena (without it, RSS stayed ~2 GB after eight 40 MP decodes).
INGRESS_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _with_env(actor_options: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    return {**actor_options, "runtime_env": {"env_vars": env}} if env else actor_options


def registry_args(args: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``args`` without the builder's own ``secrets_dir``, and that directory (None: embedded default)."""
    rest = dict(args)
    secrets_dir = rest.pop(SECRETS_DIR_ARG, None)
    if secrets_dir is not None and not isinstance(secrets_dir, str):
        raise ValueError(f"{SECRETS_DIR_ARG}: must be a path, got {type(secrets_dir).__name__}")
    return rest, secrets_dir


def family_deployments(config: ServiceConfig, secrets: SecretRouting | None = None) -> dict[str, Application]:
    """One bound family deployment per (family, GPU type), keyed by deployment name. A family
    that calls others (``helpers``) is bound after them, with their handles."""
    secrets = secrets if secrets is not None else Secrets.read()
    models_dir = config.models_path()
    bound: dict[str, Application] = {}
    keys = sorted(config.deployment_keys(), key=lambda key: bool(config.families[key[0]].helpers))
    for family_name, gpu in keys:
        family = config.families[family_name]
        name = deployment_name(family_name, gpu)
        options = with_queue_policy(family.options_for(gpu).serve_options())
        # deployment_keys() types the GPU as str; it is a validated key of gpu_pools (issue 7: type it GpuType).
        pool = config.gpu_pools[gpu] if KINDS[family.kind].on_gpu else config.control_pool
        # serve.deployment(options)(cls): the same call as serve.deployment(cls, options), typed as a Deployment.
        deployment = serve.deployment(
            name=name,
            ray_actor_options=_with_env(pool.actor_options(), secrets.for_family(family.kind)),
            **options,
        )(family_class(family.kind))
        bound[name] = deployment.bind(
            family.model.resolve(models_dir),
            revision=family.model.revision,
            dtype=family.model.dtype,
            family=family_name,
            gpu=gpu,
            max_side=family.max_side,
            stall_seconds=family.stall_seconds,
            **_kind_args(config, family_name, models_dir),
            **_helper_args(config, family_name, gpu, bound),
        )
    return {deployment_name(f, g): bound[deployment_name(f, g)] for f, g in config.deployment_keys()}


def with_queue_policy(options: dict[str, Any]) -> dict[str, Any]:
    """An autoscaled family deployment scales on its async backlog too
    (:class:`deployments.autoscaling.QueueDepthPolicy`) unless its config names a policy."""
    scaling = options.get("autoscaling_config")
    if scaling is None or scaling.get("policy"):
        return options
    return {**options, "autoscaling_config": {**scaling, "policy": {"policy_function": POLICY_PATH}}}


def coordinator_view(config: ServiceConfig) -> dict[str, dict[str, Any]]:
    """What the coordinator knows of each family deployment: its family, GPU type and
    how many requests one replica takes at once."""
    return {
        deployment_name(family, gpu): {
            "family": family, "gpu": gpu,
            "max_ongoing_requests": config.families[family].options_for(gpu).max_ongoing_requests,
        }
        for family, gpu in config.deployment_keys()
    }


def _kind_args(config: ServiceConfig, family_name: str, models_dir) -> dict[str, Any]:
    """Constructor arguments by kind: a diffusion family gets the tasks and controls its apps use
    and its components; an upscaler its output cap (and tiling)."""
    family = config.families[family_name]
    if family.kind == "diffusion":
        tasks, controls = config.family_tasks(family_name)
        return {"tasks": tasks, "controls": controls, "components": family.components.resolve(models_dir)}
    if family.kind == "upscaler":
        return {"max_output_pixels": family.max_output_pixels, "tile": family.tile, "tile_overlap": family.tile_overlap}
    if family.kind == "sd_upscaler":
        return {"max_output_pixels": family.max_output_pixels}
    if family.kind == "tts":
        return {"voice_aliases": dict(family.voice_aliases)}
    if family.kind == "llm":
        return {"max_new_tokens": family.max_new_tokens}
    if family.kind == "embedder":
        return {"max_batch_size": family.max_batch_size, "batch_wait_timeout_s": family.batch_wait_timeout_s}
    return {}


def _helper_args(config: ServiceConfig, family_name: str, gpu: str, bound: dict[str, Application]) -> dict[str, Any]:
    """``helpers``: handles (bound deployments) of the families this one calls, by kind."""
    helpers = config.helper_deployments(family_name, gpu)
    if not helpers:
        return {}
    return {"helpers": {kind: bound[deployment_name(f, g)] for kind, (f, g) in helpers.items()}}


def service_deployments(config: ServiceConfig, families: dict[str, Application],
                        secrets: SecretRouting) -> dict[str, Application]:
    """The document store (with its embedder's handle) and the chat service (with the document
    store's and the Local provider's handles), each on the control pool, when configured."""
    out: dict[str, Application] = {}
    pool = config.control_pool.actor_options()
    if (docs := config.documents) is not None:
        out["documents"] = serve.deployment(
            name="documents", ray_actor_options=_with_env(pool, secrets.for_documents()),
            **docs.deployment.serve_options(),
        )(DocumentStore).bind(
            families[deployment_name(docs.embedder, docs.inference_type)],
            collection=docs.collection, limits=docs.limits.model_dump(), **docs.qdrant_args(),
        )
    if (chat := config.chat) is not None:
        local = chat.providers.get("Local")
        llm = None
        if local is not None and local.family is not None and local.inference_type is not None:
            llm = families[deployment_name(local.family, local.inference_type)]
        out["chat"] = serve.deployment(
            name="chat", ray_actor_options=_with_env(pool, secrets.for_chat()), **chat.deployment.serve_options(),
        )(ChatService).bind(local_llm=llm, documents=out.get("documents"), web_results=chat.web_results)
    return out


def build_app(args: dict[str, Any], secrets: Secrets | None = None) -> Application:
    """Serve's application builder: ``args`` is the registry from serve_config.yaml (plus, in a
    cluster, ``secrets_dir``); ``secrets`` default to this process's environment, and must be
    absent in a cluster (see :mod:`ingress.wiring.secrets`)."""
    registry, secrets_dir = registry_args(args)
    config = ServiceConfig.model_validate(registry)
    shares = routing(secrets_dir, secrets)
    families = family_deployments(config, shares)
    services = service_deployments(config, families, shares)
    coordinator = serve.deployment(
        name="tasks",
        num_replicas=1,
        max_ongoing_requests=1000,
        health_check_period_s=2,
        ray_actor_options=_with_env(config.control_pool.actor_options(), shares.for_coordinator()),
    )(TaskCoordinator).bind(families, coordinator_view(config))
    ingress = serve.deployment(
        name="ingress",
        ray_actor_options=_with_env(config.control_pool.actor_options(), {**INGRESS_ENV, **shares.for_ingress()}),
        **config.ingress.serve_options(),
    )(serve.ingress()(StudioIngress))
    return ingress.bind(config.model_dump(mode="json"), families, coordinator, services)
