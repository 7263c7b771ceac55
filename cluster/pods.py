"""The Ray pods: the head, the cpu group and one group per GPU type, each meeting the "restricted"
Pod Security Standard (non-root, seccomp RuntimeDefault, no privilege escalation, every capability
dropped) with a read-only root filesystem and writable emptyDirs where Ray and the model libraries
write. No pod mounts a service-account token except the head's autoscaler sidecar, which calls
the Kubernetes API; no pod has a secret in its environment (secrets are files: cluster.secret_files).
"""

from __future__ import annotations

import json
from typing import Any

from cluster.labels import CPU, HEAD, gpu_component, labels
from cluster.profile import PodShape, Profile
from cluster.secret_files import role_mount, role_volume

METRICS_PORT = 8080  # Ray's metrics export port (rayStartParams metrics-export-port)
DASHBOARD_PORT = 8265  # the KubeRay operator submits serveConfigV2 here
GCS_PORT, CLIENT_PORT = 6379, 10001
UID = GID = 1000  # the image's user (Dockerfile)
#: Environment of every Ray container: Serve's proxy and controller read these at start
#: (ingress/wiring/local.py sets the same for the embedded run). Throughput mode, without its
#: direct ingress (each ingress replica serving the whole API on its own port beside the proxy), and
#: with user code on each replica's own loop (a cancelled job's slot stays busy until its thread ends).
RAY_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_LOG_TO_STDERR": "0",
}
#: Writable emptyDirs over the read-only root: Ray's session directory (logs, sockets, runtime
#: envs; ``ray-logs`` is the name KubeRay gives the volume it shares with the autoscaler), Python's
#: and the libraries' temporary files, and $HOME (caches of Hugging Face, torch/triton, numba,
#: matplotlib, insightface). KubeRay adds /dev/shm (Ray's object store) itself.
WRITABLE = {"tmp": "/tmp", "ray-logs": "/tmp/ray", "home": "/home/ray"}
#: Where a container finds the Kubernetes API credentials (what the kubelet's automount would mount).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
API_ACCESS_VOLUME = "kube-api-access-autoscaler"


def container_security() -> dict[str, Any]:
    """Every container: the restricted profile's fields, and a read-only root filesystem."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": GID, "fsGroup": GID,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}


def writable_mounts() -> list[dict[str, Any]]:
    return [{"name": name, "mountPath": path} for name, path in WRITABLE.items()]


def _pod_template(profile: Profile, component: str, shape: PodShape, *, container: str, ports: list[dict[str, Any]],
                  roles: list[str], gpus: int = 0) -> dict[str, Any]:
    """A Ray pod: the image, the Ray env, the weights, writable scratch, the roles' secret files."""
    resources: dict[str, Any] = {"cpu": shape.cpu, "memory": shape.memory}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    mounts = [{"name": "weights", "mountPath": profile.weights.mount_path, "readOnly": True}, *writable_mounts()]
    volumes: list[dict[str, Any]] = [
        {"name": "weights", "persistentVolumeClaim": {"claimName": profile.weights.claim_name, "readOnly": True}},
        *({"name": name, "emptyDir": {}} for name in WRITABLE),
    ]
    mounts += [role_mount(role) for role in roles]
    volumes += [role_volume(profile, role) for role in roles]
    env = [{"name": k, "value": v} for k, v in RAY_ENV.items()]
    env.append({"name": "STUDIO_MODELS_DIR", "value": profile.weights.mount_path})
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security(),
        "containers": [{
            "name": container,
            "image": profile.image,
            "imagePullPolicy": profile.image_pull_policy,
            "env": env,
            "ports": ports,
            "resources": {"requests": dict(resources), "limits": dict(resources)},
            "volumeMounts": mounts,
            "securityContext": container_security(),
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


def api_access_volume() -> dict[str, Any]:
    """The service-account token, the cluster's CA and the namespace, as the kubelet's automount
    projects them; the head pod mounts it in the autoscaler sidecar only."""
    return {"name": API_ACCESS_VOLUME, "projected": {"defaultMode": 0o440, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace",
                                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}}


def autoscaler_options(profile: Profile) -> dict[str, Any]:
    """KubeRay's autoscaler sidecar (in the head pod): the pinned image, the restricted context, the
    head's scratch volumes (``ray-logs`` is shared with Ray, as KubeRay does) and the API token."""
    return {
        "image": profile.autoscaler_image or profile.image,
        "imagePullPolicy": profile.image_pull_policy,
        "upscalingMode": profile.autoscaler.upscaling_mode,
        "idleTimeoutSeconds": profile.autoscaler.idle_timeout_seconds,
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}},
        "securityContext": container_security(),
        "volumeMounts": [*writable_mounts(),
                         {"name": API_ACCESS_VOLUME, "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True}],
    }


def head_group(profile: Profile) -> dict[str, Any]:
    """The head: GCS, the Serve controller (which runs the app builder) and a proxy; no Ray work,
    no secret files. Its volumes include the autoscaler's API credentials (mounted there only)."""
    ports = [{"name": "gcs", "containerPort": GCS_PORT}, {"name": "dashboard", "containerPort": DASHBOARD_PORT},
             {"name": "client", "containerPort": CLIENT_PORT}, *_worker_ports(profile)]
    template = _pod_template(profile, HEAD, profile.head, container="ray-head", ports=ports, roles=[])
    template["spec"]["volumes"].append(api_access_volume())
    return {
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0", "metrics-export-port": str(METRICS_PORT)},
        "template": template,
    }


def cpu_group(profile: Profile, roles: list[str]) -> dict[str, Any]:
    """The cpu workers: the ingress, the coordinator, the chat and document services, the families
    that need no GPU, the proxies; each role's secret directory mounted."""
    g = profile.cpu_group
    return {
        "groupName": "cpu",
        "replicas": g.min_replicas, "minReplicas": g.min_replicas, "maxReplicas": g.max_replicas,
        "rayStartParams": {
            "resources": _resource_param({g.control_resource.name: g.control_resource.per_pod}),
            "metrics-export-port": str(METRICS_PORT),
        },
        "template": _pod_template(profile, CPU, g, container="ray-worker", ports=_worker_ports(profile), roles=roles),
    }


def gpu_group(profile: Profile, gpu: str, roles: list[str]) -> dict[str, Any]:
    """One GPU type's workers: its family replicas, with the families' secret directory (S3)."""
    pool = profile.gpu_pools[gpu]
    return {
        "groupName": gpu,
        "replicas": pool.min_replicas, "minReplicas": pool.min_replicas, "maxReplicas": pool.max_replicas,
        "rayStartParams": {
            "num-gpus": str(pool.gpus_per_pod),
            "resources": _resource_param({gpu: pool.gpus_per_pod}),
            "metrics-export-port": str(METRICS_PORT),
        },
        "template": _pod_template(profile, gpu_component(gpu), pool, container="ray-worker",
                                  ports=_worker_ports(profile), roles=roles, gpus=pool.gpus_per_pod),
    }
