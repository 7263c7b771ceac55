"""The Kubernetes objects of the studio API, built from serve_config.yaml and a profile.

Pure functions of their inputs (no cluster, no clock): the same inputs give the same
objects, so the committed output can be checked for drift.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml

from cluster.profile import GpuNodePool, PodShape, Profile, ProfileError, check_against_config
from deployments.vendors import VENDOR_KEY_VARS
from ingress.wiring.secrets import QDRANT_API_KEY

BUILDER = "ingress.wiring.builder:build_app"
METRICS_PORT = 8080  # Ray's metrics export port (rayStartParams metrics-export-port)
DASHBOARD_PORT = 8265  # the KubeRay operator submits serveConfigV2 here
GCS_PORT, CLIENT_PORT = 6379, 10001
#: Environment of every Ray container: Serve's proxy and controller read these at start
#: (ingress/wiring/local.py sets the same for the embedded run).
RAY_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_LOG_TO_STDERR": "0",
}
SECRETS_DIR = "/var/run/secrets/studio"
API_KEYS_KEY, WEBHOOK_SECRETS_KEY = "api-keys.json", "webhook-secrets.json"
S3_KEYS = {"STUDIO_STORAGE_S3_ACCESS_KEY_ID": "access-key-id", "STUDIO_STORAGE_S3_SECRET_ACCESS_KEY": "secret-access-key"}
PLACEHOLDER = "REPLACE-ME"


def labels(profile: Profile, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": profile.name, "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "cluster.kuberay"}


def _meta(profile: Profile, name: str, component: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": profile.namespace, "labels": labels(profile, component), **extra}


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
    coordinator ask for the cpu group's control resource. Every other key of the
    registry ``args`` is kept as is, so config and cluster cannot drift."""
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
        env = app.setdefault("runtime_env", {}).setdefault("env_vars", {})
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


# --- pods ------------------------------------------------------------------------------------


def _security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _secret_env(profile: Profile) -> list[dict[str, Any]]:
    """What the app builder reads (it runs on the head, where Serve's controller lives):
    file paths of mounted secrets and the S3 credentials, never a value in the manifest."""
    env: list[dict[str, Any]] = [
        {"name": "STUDIO_API_KEYS_FILE", "value": f"{SECRETS_DIR}/api-keys/{API_KEYS_KEY}"},
        {"name": "STUDIO_WEBHOOK_SECRETS_FILE", "value": f"{SECRETS_DIR}/webhooks/{WEBHOOK_SECRETS_KEY}"},
    ]
    env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": profile.secrets.s3, "key": key}}}
            for var, key in S3_KEYS.items()]
    env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": profile.secrets.vendors, "key": var, "optional": True}}}
            for var in (*VENDOR_KEY_VARS, QDRANT_API_KEY)]
    return env


def _secret_volume(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "secret": {"secretName": secret, "defaultMode": 0o440, "items": [{"key": key, "path": key}]}}


def _pod_template(profile: Profile, component: str, shape: PodShape, *, container: str, ports: list[dict[str, Any]],
                  extra_env: list[dict[str, Any]], secret_mounts: list[tuple[str, str, str]],
                  gpus: int = 0) -> dict[str, Any]:
    """A Ray pod: the image, the Ray env, the weights, the given secret files, metrics annotations."""
    resources: dict[str, Any] = {"cpu": shape.cpu, "memory": shape.memory}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    mounts = [{"name": "weights", "mountPath": profile.weights.mount_path, "readOnly": True}]
    volumes: list[dict[str, Any]] = [
        {"name": "weights", "persistentVolumeClaim": {"claimName": profile.weights.claim_name, "readOnly": True}},
    ]
    for volume, secret, key in secret_mounts:
        mounts.append({"name": volume, "mountPath": f"{SECRETS_DIR}/{volume.removeprefix('secret-')}", "readOnly": True})
        volumes.append(_secret_volume(volume, secret, key))
    env = [{"name": k, "value": v} for k, v in RAY_ENV.items()]
    env.append({"name": "STUDIO_MODELS_DIR", "value": profile.weights.mount_path})
    spec: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
        "containers": [{
            "name": container,
            "image": profile.image,
            "imagePullPolicy": profile.image_pull_policy,
            "env": env + extra_env,
            "ports": ports,
            "resources": {"requests": dict(resources), "limits": dict(resources)},
            "volumeMounts": mounts,
            "securityContext": _security_context(),
        }],
        "volumes": volumes,
    }
    if shape.node_selector:
        spec["nodeSelector"] = dict(shape.node_selector)
    if shape.tolerations:
        spec["tolerations"] = [t.model_dump(exclude_none=True) for t in shape.tolerations]
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT), "prometheus.io/path": "/metrics"}
    return {"metadata": {"labels": labels(profile, component), "annotations": annotations}, "spec": spec}


def _worker_ports(profile: Profile) -> list[dict[str, Any]]:
    return [{"name": "serve", "containerPort": profile.serve_port}, {"name": "metrics", "containerPort": METRICS_PORT}]


def _resource_param(resources: dict[str, int]) -> str:
    """rayStartParams ``resources``: a JSON object inside a quoted string, as KubeRay documents it."""
    return json.dumps(json.dumps(resources))


def head_group(profile: Profile) -> dict[str, Any]:
    s = profile.secrets
    ports = [{"name": "gcs", "containerPort": GCS_PORT}, {"name": "dashboard", "containerPort": DASHBOARD_PORT},
             {"name": "client", "containerPort": CLIENT_PORT}, *_worker_ports(profile)]
    return {
        # No Ray work on the head: it runs GCS, the Serve controller and the app build only.
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0", "metrics-export-port": str(METRICS_PORT)},
        "template": _pod_template(
            profile, "ray-head", profile.head, container="ray-head", ports=ports, extra_env=_secret_env(profile),
            secret_mounts=[("secret-api-keys", s.api_keys, API_KEYS_KEY),
                           ("secret-webhooks", s.webhook_secrets, WEBHOOK_SECRETS_KEY)]),
    }


def cpu_group(profile: Profile) -> dict[str, Any]:
    g = profile.cpu_group
    return {
        "groupName": "cpu",
        "replicas": g.min_replicas, "minReplicas": g.min_replicas, "maxReplicas": g.max_replicas,
        "rayStartParams": {
            "resources": _resource_param({g.control_resource.name: g.control_resource.per_pod}),
            "metrics-export-port": str(METRICS_PORT),
        },
        # The task coordinator reads the webhook secrets file at the path the builder hands it.
        "template": _pod_template(profile, "ray-worker-cpu", g, container="ray-worker", ports=_worker_ports(profile),
                                  extra_env=[], secret_mounts=[("secret-webhooks", profile.secrets.webhook_secrets,
                                                                WEBHOOK_SECRETS_KEY)]),
    }


def gpu_group(profile: Profile, gpu: str) -> dict[str, Any]:
    pool = profile.gpu_pools[gpu]
    return {
        "groupName": gpu,
        "replicas": pool.min_replicas, "minReplicas": pool.min_replicas, "maxReplicas": pool.max_replicas,
        "rayStartParams": {
            "num-gpus": str(pool.gpus_per_pod),
            "resources": _resource_param({gpu: pool.gpus_per_pod}),
            "metrics-export-port": str(METRICS_PORT),
        },
        # Family replicas get their S3 credentials from the builder (runtime_env); no secret is mounted here.
        "template": _pod_template(profile, f"ray-worker-{gpu}", pool, container="ray-worker", ports=_worker_ports(profile),
                                  extra_env=[], secret_mounts=[], gpus=pool.gpus_per_pod),
    }


# --- objects ---------------------------------------------------------------------------------


def rayservice(profile: Profile, serve_config: dict[str, Any]) -> dict[str, Any]:
    config = cluster_serve_config(serve_config, profile)
    gpus = list(next(a for a in config["applications"] if a.get("import_path") == BUILDER)["args"]["gpu_pools"])
    port = profile.serve_port
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": _meta(profile, profile.name, "rayservice"),
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
                "autoscalerOptions": {
                    "upscalingMode": profile.autoscaler.upscaling_mode,
                    "idleTimeoutSeconds": profile.autoscaler.idle_timeout_seconds,
                    "imagePullPolicy": profile.image_pull_policy,
                    "resources": {"requests": {"cpu": "500m", "memory": "512Mi"},
                                  "limits": {"cpu": "500m", "memory": "512Mi"}},
                    "securityContext": _security_context(),
                },
                # Token authentication on every Ray port (KubeRay makes and mounts the token).
                "authOptions": {"mode": "token"},
                "gcsFaultToleranceOptions": {
                    "redisAddress": profile.redis.address,
                    "redisPassword": {"valueFrom": {"secretKeyRef": {
                        "name": profile.redis.password_secret.name, "key": profile.redis.password_secret.key}}},
                },
                "headGroupSpec": head_group(profile),
                "workerGroupSpecs": [cpu_group(profile), *(gpu_group(profile, g) for g in gpus)],
            },
        },
    }


def namespace(profile: Profile) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": profile.namespace, "labels": labels(profile, "namespace")}}


def weights_claim(profile: Profile) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": profile.weights.size}}}
    if profile.weights.storage_class:
        spec["storageClassName"] = profile.weights.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _meta(profile, profile.weights.claim_name, "weights"), "spec": spec}


def ingress(profile: Profile) -> dict[str, Any]:
    i = profile.ingress
    backend = {"service": {"name": serve_service_name(profile), "port": {"number": profile.serve_port}}}
    spec: dict[str, Any] = {
        "ingressClassName": i.class_name,
        "rules": [{"host": i.host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}],
    }
    if i.tls_secret:
        spec["tls"] = [{"hosts": [i.host], "secretName": i.tls_secret}]
    meta = _meta(profile, profile.name, "ingress")
    if i.annotations:
        meta["annotations"] = dict(i.annotations)
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": spec}


def _from_namespace(name: str, ports: list[int]) -> dict[str, Any]:
    return {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}],
            "ports": [{"protocol": "TCP", "port": p} for p in ports]}


def network_policy(profile: Profile) -> dict[str, Any]:
    """Ray's ports only among the cluster's own pods; the Serve port from the ingress controller
    (and the KubeRay operator's health checks); dashboard to the operator; metrics to Prometheus."""
    pods = {"matchLabels": {"app.kubernetes.io/name": profile.name}}
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _meta(profile, f"{profile.name}-ray", "network-policy"),
        "spec": {
            "podSelector": pods,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": pods}]},
                _from_namespace(profile.ingress.controller_namespace, [profile.serve_port]),
                _from_namespace(profile.operator_namespace, [DASHBOARD_PORT, profile.serve_port]),
                _from_namespace(profile.monitoring_namespace, [METRICS_PORT]),
            ],
        },
    }


def secret_templates(profile: Profile) -> dict[str, dict[str, Any]]:
    """Secrets with placeholder values: the shape to fill in, never real values."""
    s = profile.secrets

    def secret(name: str, data: dict[str, str], what: str) -> dict[str, Any]:
        meta = _meta(profile, name, "secret", annotations={"studio.example.com/template": f"placeholder values: {what}"})
        return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta, "stringData": data}

    return {
        "api-keys": secret(s.api_keys, {API_KEYS_KEY: json.dumps({f"{PLACEHOLDER}-api-key": "tenant-a"})},
                           "a JSON object API key -> tenant; read by the app builder on the head"),
        "webhook-secrets": secret(s.webhook_secrets, {WEBHOOK_SECRETS_KEY: json.dumps({"tenant-a": f"whsec_{PLACEHOLDER}"})},
                                  "a JSON object tenant -> whsec_<base64>; read by the builder and the task coordinator"),
        "s3": secret(s.s3, {key: PLACEHOLDER for key in S3_KEYS.values()},
                     "S3 credentials; the builder hands them to the ingress, coordinator and family replicas"),
        "redis": secret(profile.redis.password_secret.name, {profile.redis.password_secret.key: PLACEHOLDER},
                        "the password of the GCS fault-tolerance Redis"),
        "vendors": secret(s.vendors, {var: PLACEHOLDER for var in (*VENDOR_KEY_VARS, QDRANT_API_KEY)},
                          "the vendors' API keys (each optional; leave out a vendor you do not use); the builder "
                          "hands the LLM and Tavily keys to the chat service, ElevenLabs' to its speech family, "
                          "Qdrant's to the document store"),
    }


def all_objects(profile: Profile, serve_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Relative file name under k8s/generated/ -> object, in apply order."""
    objects = {
        "00-namespace.yaml": namespace(profile),
        "10-weights-pvc.yaml": weights_claim(profile),
        "20-rayservice.yaml": rayservice(profile, serve_config),
        "30-ingress.yaml": ingress(profile),
        "40-networkpolicy.yaml": network_policy(profile),
    }
    objects.update({f"secrets/{name}.template.yaml": obj for name, obj in secret_templates(profile).items()})
    return objects
