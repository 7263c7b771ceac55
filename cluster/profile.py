"""The deployment profile (``k8s/profile.yaml``): what serve_config.yaml does not say
about a Kubernetes cluster — image, namespace, node pools, secrets, network, ingress, weights."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from deployments.catalog import GPU_TYPES

#: A Kubernetes object name (RFC 1123 DNS label).
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
#: A CPU or memory quantity ("4", "500m", "16Gi").
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"
#: An image reference pinned by digest: ``repo[:tag]@sha256:<64 hex>`` (the digest is what runs).
IMAGE_BY_DIGEST = (r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
                   r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?@sha256:[a-f0-9]{64}$")
#: Settings for tests only: a cluster refuses any value of theirs that is not false.
TEST_ONLY_VARS = ("STUDIO_ALLOW_LOOPBACK_INPUTS",)
#: RFC 1918 private ranges: the default place of the Kubernetes API server (its service and endpoints).
RFC1918 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")


class ProfileError(ValueError):
    """The profile is invalid or does not fit serve_config.yaml; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Toleration(_Strict):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class PodShape(_Strict):
    """Where one kind of Ray pod runs and what it asks for."""

    cpu: str = Field(pattern=QUANTITY)
    memory: str = Field(pattern=QUANTITY)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)


class WorkerGroup(PodShape):
    min_replicas: int = Field(0, ge=0, le=1000)
    max_replicas: int = Field(ge=1, le=1000)

    @model_validator(mode="after")
    def _bounds(self) -> WorkerGroup:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} is greater than max_replicas {self.max_replicas}")
        return self


class ControlResource(_Strict):
    """The custom resource the cpu group advertises and the ingress and coordinator ask for (1 each),
    so that they always land on the cpu group (never on the head or a GPU node)."""

    name: str = Field("cpu_pool", pattern=r"^[a-z][a-z0-9_]{0,62}$")
    per_pod: int = Field(1000, ge=1, le=100000, description="Units per cpu pod: room for many replicas.")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in GPU_TYPES or name.lower() in ("cpu", "gpu", "memory", "object_store_memory"):
            raise ValueError(f"{name!r} is a GPU type or a Ray resource; choose another name")
        return name


class CpuGroup(WorkerGroup):
    """The ``cpu`` worker group: the ingress, the proxies and the task coordinator."""

    min_replicas: int = Field(1, ge=1, le=1000, description="The ingress and the coordinator need a cpu pod.")
    control_resource: ControlResource = ControlResource()


class GpuNodePool(WorkerGroup):
    """One GPU type's node pool: each pod has ``gpus_per_pod`` GPUs; a family replica takes ``replica_gpus``."""

    min_replicas: int = Field(0, ge=0, le=0, description="GPU groups scale from zero (the autoscaler adds nodes).")
    gpus_per_pod: int = Field(ge=1, le=16)
    replica_gpus: float = Field(1, gt=0, le=16)
    replica_cpus: float | None = Field(None, ge=0, description="num_cpus of a family replica; default: serve_config's.")

    @model_validator(mode="after")
    def _fits(self) -> GpuNodePool:
        if self.replica_gpus > self.gpus_per_pod:
            raise ValueError(f"replica_gpus {self.replica_gpus} exceeds gpus_per_pod {self.gpus_per_pod}")
        return self


class SecretRef(_Strict):
    name: str = Field(pattern=DNS_LABEL)
    key: str = Field(min_length=1, max_length=253)


class Redis(_Strict):
    address: str = Field(pattern=r"^[A-Za-z0-9.-]+:[0-9]{1,5}$", description="host:port of an external Redis")
    password_secret: SecretRef

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


class Pods(_Strict):
    """Pods of a service, for NetworkPolicies: their labels and namespace (default: the profile's)."""

    labels: dict[str, str] = Field(min_length=1)
    namespace: str | None = Field(None, pattern=DNS_LABEL)


class Endpoint(_Strict):
    """Where a service the Ray pods call is: its pods, or address blocks (CIDRs); and its TCP ports
    (none: the port of its address in the profile, for Redis and Qdrant)."""

    cidrs: list[str] = Field(default_factory=list)
    pods: Pods | None = None
    ports: list[int] = Field(default_factory=list)

    @field_validator("cidrs")
    @classmethod
    def _cidrs(cls, cidrs: list[str]) -> list[str]:
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR block: {exc}") from None
        return cidrs

    @field_validator("ports")
    @classmethod
    def _ports(cls, ports: list[int]) -> list[int]:
        if not all(1 <= p <= 65535 for p in ports):
            raise ValueError("ports are 1..65535")
        return ports

    @model_validator(mode="after")
    def _one_place(self) -> Endpoint:
        if bool(self.cidrs) == (self.pods is not None):
            raise ValueError("give exactly one of cidrs or pods")
        return self


class Network(_Strict):
    """The addresses the NetworkPolicies' egress rules allow, besides the Ray pods themselves."""

    object_store: Endpoint = Field(description="The S3 endpoint (e.g. the subnets of an S3 interface endpoint) "
                                   "or in-cluster object store pods, and its ports.")
    dns: Endpoint = Endpoint(pods=Pods(labels={"k8s-app": "kube-dns"}, namespace="kube-system"), ports=[53])
    api_server: Endpoint = Field(
        Endpoint(cidrs=list(RFC1918), ports=[443, 6443]),
        description="The Kubernetes API server (the head's autoscaler calls it; the cpu pods never may).")
    redis: Endpoint = Endpoint(pods=Pods(labels={"app.kubernetes.io/name": "redis"}))
    qdrant: Endpoint = Endpoint(pods=Pods(labels={"app.kubernetes.io/name": "qdrant"}))
    internet_ports: list[int] = Field(
        [80, 443], description="Ports of public addresses the cpu pods may reach (client URLs, webhooks, "
        "vendors); empty: every port.")

    @model_validator(mode="after")
    def _ports_given(self) -> Network:
        for name in ("object_store", "dns", "api_server"):
            if not getattr(self, name).ports:
                raise ValueError(f"{name}.ports: give at least one port")
        return self


class SecretNames(_Strict):
    api_keys: str = Field(pattern=DNS_LABEL)
    webhook_secrets: str = Field(pattern=DNS_LABEL)
    s3: str = Field(pattern=DNS_LABEL)
    vendors: str = Field("studio-vendors", pattern=DNS_LABEL, description="Keys named STUDIO_<VENDOR>_API_KEY "
                         "(and STUDIO_QDRANT_API_KEY), each optional: the builder hands each to its deployment.")


class Autoscaler(_Strict):
    idle_timeout_seconds: int = Field(600, ge=10, le=86400)
    upscaling_mode: Literal["Default", "Aggressive", "Conservative"] = "Default"


class IngressSpec(_Strict):
    host: str = Field(pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]{2,}$")
    class_name: str = Field(pattern=DNS_LABEL)
    tls_secret: str | None = Field(None, pattern=DNS_LABEL)
    controller_namespace: str = Field(pattern=DNS_LABEL)
    annotations: dict[str, str] = Field(default_factory=dict)


class Weights(_Strict):
    claim_name: str = Field(pattern=DNS_LABEL)
    mount_path: str = Field(pattern=r"^/[^\s]*$")
    storage_class: str | None = None
    size: str = Field(pattern=QUANTITY)


class Profile(_Strict):
    """``k8s/profile.yaml``."""

    name: str = Field(pattern=DNS_LABEL, max_length=40)
    namespace: str = Field(pattern=DNS_LABEL)
    image: str = Field(min_length=1, description="repo@sha256:<digest>: the image of every Ray container.")
    autoscaler_image: str | None = Field(None, min_length=1, description="repo@sha256:<digest> of KubeRay's "
                                         "autoscaler sidecar; default: image.")
    allow_tag_images: bool = Field(False, description="Development only: accept images named by a tag alone.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    ray_version: str = Field(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$")
    serve_port: int = Field(8000, ge=1024, le=65535)
    head: PodShape
    cpu_group: CpuGroup
    gpu_pools: dict[str, GpuNodePool] = Field(min_length=1)
    autoscaler: Autoscaler = Autoscaler()
    redis: Redis
    secrets: SecretNames
    serve_env: dict[str, str] = Field(default_factory=dict)
    qdrant_url: str | None = Field(
        None, pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$",
        description="The Qdrant server of the document store. Required when serve_config.yaml has `documents`: "
        "Qdrant's local mode would keep the vectors on one pod's disk.")
    network: Network
    ingress: IngressSpec
    operator_namespace: str = Field(pattern=DNS_LABEL)
    monitoring_namespace: str = Field(pattern=DNS_LABEL)
    weights: Weights

    @field_validator("gpu_pools")
    @classmethod
    def _known_gpu_types(cls, pools: dict[str, GpuNodePool]) -> dict[str, GpuNodePool]:
        for gpu in pools:
            if gpu not in GPU_TYPES:
                raise ValueError(f"unknown GPU type {gpu!r}; use one of {', '.join(GPU_TYPES)}")
        return pools

    @field_validator("serve_env")
    @classmethod
    def _no_secrets(cls, env: dict[str, str]) -> dict[str, str]:
        from ingress.wiring.secrets import SECRET_VARS

        for name in env:
            if name in SECRET_VARS:
                raise ValueError(f"{name} is a secret: put it in a Secret (secrets:), not in serve_env")
            if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
                raise ValueError(f"{name!r} is not an environment variable name")
        refuse_test_only(env)
        return env

    @model_validator(mode="after")
    def _images_by_digest(self) -> Profile:
        for field in ("image", "autoscaler_image"):
            image = getattr(self, field)
            if image is not None and not self.allow_tag_images and not re.fullmatch(IMAGE_BY_DIGEST, image):
                raise ValueError(f"{field} {image!r} is not pinned by digest (repo@sha256:<64 hex>): a tag can be "
                                 "moved to other contents; set allow_tag_images: true for development only")
        return self


def refuse_test_only(env: dict[str, Any], where: str = "serve_env") -> None:
    """A cluster never runs with a tests-only setting on: any value that is not false is refused."""
    for name in TEST_ONLY_VARS:
        if name not in env:
            continue
        try:
            on = TypeAdapter(bool).validate_python(str(env[name]).strip())
        except ValidationError:
            on = True
        if on:
            raise ValueError(f"{where}: {name}={env[name]!r} lets input URLs reach loopback addresses; it is for "
                             "tests only and a cluster refuses it (remove it)")


def _where(error: Any) -> str:
    return ".".join(str(p) for p in error["loc"]) or "(top level)"


def load_profile(path: Path) -> Profile:
    """Read and validate a profile; a :class:`ProfileError` names the file and the field."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"{path}: cannot read: {exc}") from None
    try:
        return Profile.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{path}: {_where(e)}: {e['msg']}" for e in exc.errors()]
        raise ProfileError("\n".join(lines)) from None


def check_against_config(profile: Profile, gpu_pools: dict[str, Any], where: str = "profile") -> None:
    """Every GPU type of serve_config.yaml's gpu_pools has a node pool, and no pool is left over."""
    missing = [g for g in gpu_pools if g not in profile.gpu_pools]
    extra = [g for g in profile.gpu_pools if g not in gpu_pools]
    if missing:
        raise ProfileError(f"{where}: gpu_pools: no node pool for GPU type(s) {', '.join(missing)} "
                           "of serve_config.yaml's gpu_pools")
    if extra:
        raise ProfileError(f"{where}: gpu_pools: GPU type(s) {', '.join(extra)} are not in serve_config.yaml's gpu_pools")
