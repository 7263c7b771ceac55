"""The Kubernetes objects of the studio API, built from serve_config.yaml and a profile:
the RayService (serveConfigV2 and the Ray pods of cluster.pods), the namespace, the weights
claim, the Ingress, the NetworkPolicies (cluster.network) and the Secret templates
(cluster.secret_files).

Pure functions of their inputs (no cluster, no clock): the same inputs give the same
objects, so the committed output can be checked for drift.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from cluster.labels import labels, meta
from cluster.network import network_policies
from cluster.pods import RAY_ENV, autoscaler_options, cpu_group, gpu_group, head_group
from cluster.profile import GpuNodePool, Profile, ProfileError, check_against_config, refuse_test_only
from cluster.secret_files import PLACEHOLDER, SECRETS_DIR, roles_by_group, secret_templates
from ingress.wiring.secrets import SECRETS_DIR_ARG

BUILDER = "ingress.wiring.builder:build_app"
__all__ = ["BUILDER", "PLACEHOLDER", "RAY_ENV", "all_objects", "cluster_serve_config", "rayservice"]


class _PlainDumper(yaml.SafeDumper):
    """No anchors or aliases (serve_config.yaml's ``<<: *x`` merges come out spelled in full)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def serve_service_name(profile: Profile) -> str:
    return f"{profile.name}-serve-svc"


# --- serveConfigV2 ---------------------------------------------------------------------------


def cluster_serve_config(serve_config: dict[str, Any], profile: Profile) -> dict[str, Any]:
    """serve_config.yaml as the cluster runs it: proxies listen on all interfaces, models
    come from the mounted weights, each GPU pool asks for real GPUs, the ingress and the
    coordinator ask for the cpu group's control resource, and the builder hands out the
    secrets as files under ``secrets_dir``. Every other key of the registry ``args`` is
    kept as is, so config and cluster cannot drift."""
    config = copy.deepcopy(serve_config)
    http = config.setdefault("http_options", {})
    http["host"], http["port"] = "0.0.0.0", profile.serve_port
    apps = [a for a in config.get("applications") or [] if a.get("import_path") == BUILDER]
    if not apps:
        raise ProfileError(f"serve_config.yaml: no application with import_path {BUILDER}")
    for app in apps:
        args = app.get("args") or {}
        pools = args.get("gpu_pools") or {}
        check_against_config(profile, pools, where=f"profile (application {app.get('name')!r})")
        args["models_dir"] = profile.weights.mount_path
        args["gpu_pools"] = {gpu: _gpu_pool(gpu, pool, profile.gpu_pools[gpu]) for gpu, pool in pools.items()}
        args["control_pool"] = _control_pool(args.get("control_pool") or {}, profile)
        if args.get("documents"):  # the vectors live in a Qdrant server, not on one pod's disk
            if profile.qdrant_url is None:
                raise ProfileError("profile: qdrant_url is required when serve_config.yaml has `documents`")
            args["documents"] = {**{k: v for k, v in args["documents"].items() if k != "qdrant_path"},
                                 "qdrant_url": profile.qdrant_url}
        args[SECRETS_DIR_ARG] = SECRETS_DIR  # each deployment is told its role's directory, never a value
        env = app.setdefault("runtime_env", {}).setdefault("env_vars", {})
        try:
            refuse_test_only(env, where=f"serve_config.yaml (application {app.get('name')!r}) runtime_env")
        except ValueError as exc:
            raise ProfileError(str(exc)) from None
        env.update(profile.serve_env)
        env["STUDIO_MODELS_DIR"] = profile.weights.mount_path
    return config


def _gpu_pool(gpu: str, pool: dict[str, Any], node_pool: GpuNodePool) -> dict[str, Any]:
    resources = dict(pool.get("resources") or {})
    if resources.get(gpu, 0) <= 0:
        raise ProfileError(f"serve_config.yaml: gpu_pools.{gpu}.resources must request the custom resource {gpu!r}")
    if resources[gpu] > node_pool.gpus_per_pod:
        raise ProfileError(f"serve_config.yaml: gpu_pools.{gpu} asks {resources[gpu]} {gpu} per replica; "
                           f"a pod advertises {node_pool.gpus_per_pod} (profile gpu_pools.{gpu}.gpus_per_pod)")
    num_cpus = node_pool.replica_cpus if node_pool.replica_cpus is not None else pool.get("num_cpus", 0)
    return {"resources": resources, "num_gpus": _number(node_pool.replica_gpus), "num_cpus": _number(num_cpus)}


def _control_pool(pool: dict[str, Any], profile: Profile) -> dict[str, Any]:
    """The ingress and the coordinator ask for one unit of the cpu group's resource (num_cpus kept)."""
    return {**pool, "resources": {profile.cpu_group.control_resource.name: 1}, "num_cpus": _number(pool.get("num_cpus", 0))}


def _number(value: float) -> float | int:
    """1.0 -> 1, so the generated config reads like the hand-written one."""
    return int(value) if float(value).is_integer() else value


# --- objects ---------------------------------------------------------------------------------


def builder_args(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The registry ``args`` of each application the studio builder builds."""
    return [a["args"] for a in config["applications"] if a.get("import_path") == BUILDER]


def _roles(config: dict[str, Any]) -> dict[str, list[str]]:
    """Worker group -> secret roles, over every builder application."""
    out: dict[str, list[str]] = {}
    for args in builder_args(config):
        for group, roles in roles_by_group(args).items():
            known = out.setdefault(group, [])
            known += [role for role in roles if role not in known]
    return out


def rayservice(profile: Profile, serve_config: dict[str, Any]) -> dict[str, Any]:
    config = cluster_serve_config(serve_config, profile)
    gpus = list(builder_args(config)[0]["gpu_pools"])
    roles = _roles(config)
    port = profile.serve_port
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": meta(profile, profile.name, "rayservice"),
        "spec": {
            # A changed rayClusterConfig starts a new cluster and switches traffic once its apps are healthy
            # (blue/green); a changed serveConfigV2 alone is applied in place (rolling replica update).
            "upgradeStrategy": {"type": "NewCluster"},
            "excludeHeadPodFromServeSvc": True,
            "serveService": {
                "metadata": {"name": serve_service_name(profile), "labels": labels(profile, "serve")},
                "spec": {"type": "ClusterIP", "ports": [{"name": "serve", "port": port, "targetPort": port}]},
            },
            "serveConfigV2": yaml.dump(config, Dumper=_PlainDumper, sort_keys=False, width=120),
            "rayClusterConfig": {
                "rayVersion": profile.ray_version,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": autoscaler_options(profile),
                # Token authentication on every Ray port (KubeRay makes the token and puts it in each Ray
                # container's environment as RAY_AUTH_TOKEN, from a Secret).
                "authOptions": {"mode": "token"},
                # KubeRay puts the password in the head container's environment (REDIS_PASSWORD): the one
                # secret env var there, which the CRD offers no other way to pass (docs/cluster-security.md).
                "gcsFaultToleranceOptions": {
                    "redisAddress": profile.redis.address,
                    "redisPassword": {"valueFrom": {"secretKeyRef": {
                        "name": profile.redis.password_secret.name, "key": profile.redis.password_secret.key}}},
                },
                "headGroupSpec": head_group(profile),
                "workerGroupSpecs": [cpu_group(profile, roles["cpu"]),
                                     *(gpu_group(profile, g, roles.get(g, [])) for g in gpus)],
            },
        },
    }


def namespace(profile: Profile) -> dict[str, Any]:
    """The namespace, with the "restricted" Pod Security Standard enforced (and warned, audited)."""
    pss = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": profile.namespace, "labels": {**labels(profile, "namespace"), **pss}}}


def weights_claim(profile: Profile) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": profile.weights.size}}}
    if profile.weights.storage_class:
        spec["storageClassName"] = profile.weights.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": meta(profile, profile.weights.claim_name, "weights"), "spec": spec}


def ingress(profile: Profile) -> dict[str, Any]:
    i = profile.ingress
    backend = {"service": {"name": serve_service_name(profile), "port": {"number": profile.serve_port}}}
    spec: dict[str, Any] = {
        "ingressClassName": i.class_name,
        "rules": [{"host": i.host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}],
    }
    if i.tls_secret:
        spec["tls"] = [{"hosts": [i.host], "secretName": i.tls_secret}]
    metadata = meta(profile, profile.name, "ingress")
    if i.annotations:
        metadata["annotations"] = dict(i.annotations)
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata, "spec": spec}


def all_objects(profile: Profile, serve_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Relative file name under k8s/generated/ -> object, in apply order."""
    service = rayservice(profile, serve_config)
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    args = builder_args(config)
    objects = {
        "00-namespace.yaml": namespace(profile),
        "10-weights-pvc.yaml": weights_claim(profile),
        "20-rayservice.yaml": service,
        "30-ingress.yaml": ingress(profile),
        **network_policies(profile, list(args[0]["gpu_pools"]), documents=any(a.get("documents") for a in args)),
    }
    objects.update({f"secrets/{name}.template.yaml": obj for name, obj in secret_templates(profile).items()})
    return objects
