"""NetworkPolicies: who may reach the Ray pods, and where each kind of Ray pod may go.

* every Ray pod accepts Ray's traffic from the other Ray pods, the Serve port from the ingress
  controller, the dashboard and Serve port from the KubeRay operator, metrics from Prometheus;
* the head reaches the Ray pods, DNS, Redis (GCS fault tolerance) and the Kubernetes API
  server (its autoscaler sidecar);
* the cpu pods (ingress, coordinator's webhooks, chat -> vendors: the pods that fetch client
  URLs) reach the Ray pods, DNS, the object store, Qdrant, and public addresses only
  (:data:`NON_PUBLIC` and the API server's and Redis's blocks excepted);
* the GPU pods (family replicas) reach the Ray pods, DNS and the object store, nothing else;
* Redis accepts the head pods only, Qdrant the cpu pods only (and each its own peers).
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlparse

from cluster.labels import CPU, HEAD, gpu_component, meta, pods_of, ray_pods
from cluster.pods import DASHBOARD_PORT, METRICS_PORT
from cluster.profile import Endpoint, Profile

#: Addresses that are not the public internet: IPv4 "this network", RFC 1918, CGNAT, loopback,
#: link-local (the cloud metadata service 169.254.169.254 among them), IETF/benchmarking blocks,
#: multicast, reserved; IPv6 loopback, IPv4-mapped, NAT64 (which reaches IPv4 private ranges),
#: discard, documentation, 6to4, unique-local (AWS's metadata fd00:ec2::254 among them),
#: link-local, multicast.
NON_PUBLIC = {
    "0.0.0.0/0": ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
                  "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4"),
    "::/0": ("::1/128", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001:db8::/32", "2002::/16",
             "fc00::/7", "fe80::/10", "ff00::/8"),
}


def _tcp(ports: list[int]) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def _peers(profile: Profile, endpoint: Endpoint) -> list[dict[str, Any]]:
    if endpoint.pods is None:
        return [{"ipBlock": {"cidr": cidr}} for cidr in endpoint.cidrs]
    namespace = endpoint.pods.namespace or profile.namespace
    return [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
             "podSelector": {"matchLabels": dict(endpoint.pods.labels)}}]


def _to(profile: Profile, endpoint: Endpoint, ports: list[int]) -> dict[str, Any]:
    return {"to": _peers(profile, endpoint), "ports": _tcp(ports)}


def _dns(profile: Profile) -> dict[str, Any]:
    ports = profile.network.dns.ports
    return {"to": _peers(profile, profile.network.dns),
            "ports": [{"protocol": proto, "port": p} for p in ports for proto in ("UDP", "TCP")]}


def redis_ports(profile: Profile) -> list[int]:
    return profile.network.redis.ports or [profile.redis.port]


def qdrant_ports(profile: Profile) -> list[int]:
    if profile.network.qdrant.ports:
        return profile.network.qdrant.ports
    url = urlparse(profile.qdrant_url or "http://qdrant:6333")
    return [url.port or (443 if url.scheme == "https" else 80)]


def internet_excepts(profile: Profile) -> dict[str, list[str]]:
    """Per family's catch-all block, the blocks it leaves out: :data:`NON_PUBLIC`, and the API server's
    and Redis's blocks where they are public addresses."""
    out = {block: list(excepts) for block, excepts in NON_PUBLIC.items()}
    for endpoint in (profile.network.api_server, profile.network.redis):
        for cidr in endpoint.cidrs:
            net = ipaddress.ip_network(cidr)
            block = "0.0.0.0/0" if net.version == 4 else "::/0"
            covered = any(net.subnet_of(ipaddress.ip_network(e)) for e in out[block])  # type: ignore[arg-type]
            if net.prefixlen and not covered:
                out[block].append(cidr)
    return out


def _internet(profile: Profile) -> dict[str, Any]:
    rule: dict[str, Any] = {"to": [{"ipBlock": {"cidr": block, "except": excepts}}
                                   for block, excepts in internet_excepts(profile).items()]}
    if profile.network.internet_ports:
        rule["ports"] = _tcp(profile.network.internet_ports)
    return rule


def _policy(profile: Profile, name: str, selector: dict[str, Any], *, ingress: list[dict[str, Any]] | None = None,
            egress: list[dict[str, Any]] | None = None, namespace: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": selector,
                            "policyTypes": [t for t, rules in (("Ingress", ingress), ("Egress", egress)) if rules is not None]}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    metadata = meta(profile, f"{profile.name}-{name}", "network-policy")
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": metadata, "spec": spec}


def _from_namespace(name: str, ports: list[int]) -> dict[str, Any]:
    return {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}], "ports": _tcp(ports)}


def ray_ingress(profile: Profile) -> dict[str, Any]:
    """Ray's ports only among the cluster's own pods; the Serve port from the ingress controller
    (and the KubeRay operator's health checks); dashboard to the operator; metrics to Prometheus."""
    return _policy(profile, "ray", ray_pods(profile), ingress=[
        {"from": [{"podSelector": ray_pods(profile)}]},
        _from_namespace(profile.ingress.controller_namespace, [profile.serve_port]),
        _from_namespace(profile.operator_namespace, [DASHBOARD_PORT, profile.serve_port]),
        _from_namespace(profile.monitoring_namespace, [METRICS_PORT]),
    ])


def head_egress(profile: Profile) -> dict[str, Any]:
    n = profile.network
    return _policy(profile, "head-egress", pods_of(profile, HEAD), egress=[
        {"to": [{"podSelector": ray_pods(profile)}]}, _dns(profile),
        _to(profile, n.redis, redis_ports(profile)), _to(profile, n.api_server, n.api_server.ports),
    ])


def cpu_egress(profile: Profile, documents: bool = True) -> dict[str, Any]:
    """The cpu pods; Qdrant only when there is a document store (it runs here)."""
    n = profile.network
    qdrant = [_to(profile, n.qdrant, qdrant_ports(profile))] if documents else []
    return _policy(profile, "cpu-egress", pods_of(profile, CPU), egress=[
        {"to": [{"podSelector": ray_pods(profile)}]}, _dns(profile),
        _to(profile, n.object_store, n.object_store.ports), *qdrant, _internet(profile),
    ])


def gpu_egress(profile: Profile, gpus: list[str]) -> dict[str, Any]:
    n = profile.network
    return _policy(profile, "gpu-egress", pods_of(profile, *(gpu_component(g) for g in gpus)), egress=[
        {"to": [{"podSelector": ray_pods(profile)}]}, _dns(profile),
        _to(profile, n.object_store, n.object_store.ports),
    ])


def _service_policy(profile: Profile, name: str, endpoint: Endpoint, clients: str, ports: list[int]) -> dict[str, Any] | None:
    """An in-cluster service accepts ``clients`` (Ray pods of one component) on its ports, and its own
    pods (replication, cluster peers) on any; None when the service is outside the cluster (CIDRs)."""
    if endpoint.pods is None:
        return None
    own = {"matchLabels": dict(endpoint.pods.labels)}
    clients_from = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": profile.namespace}},
                    "podSelector": pods_of(profile, clients)}
    return _policy(profile, name, own, namespace=endpoint.pods.namespace or profile.namespace, ingress=[
        {"from": [clients_from], "ports": _tcp(ports)}, {"from": [{"podSelector": own}]},
    ])


def network_policies(profile: Profile, gpus: list[str], documents: bool) -> dict[str, dict[str, Any]]:
    """File name -> NetworkPolicy, in apply order (Qdrant's only when there is a document store)."""
    found: dict[str, dict[str, Any] | None] = {
        "40-network-ray-ingress.yaml": ray_ingress(profile),
        "41-network-head-egress.yaml": head_egress(profile),
        "42-network-cpu-egress.yaml": cpu_egress(profile, documents),
        "43-network-gpu-egress.yaml": gpu_egress(profile, gpus),
        "44-network-redis.yaml": _service_policy(profile, "redis", profile.network.redis, HEAD, redis_ports(profile)),
        "45-network-qdrant.yaml": _service_policy(profile, "qdrant", profile.network.qdrant, CPU, qdrant_ports(profile))
        if documents else None,
    }
    return {name: policy for name, policy in found.items() if policy is not None}
