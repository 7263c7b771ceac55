"""The NetworkPolicies, evaluated: where each kind of Ray pod may connect, and who may reach Redis
and Qdrant. A small evaluator of NetworkPolicy semantics (ipBlock with except, pod and namespace
selectors, ports) answers "may this pod connect there?" for the generated objects."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.labels import CPU, HEAD, gpu_component
from cluster.profile import ProfileError, load_profile
from deployments.catalog import GPU_TYPES
from tests.cluster.conftest import ROOT, render_with

PROFILE = load_profile(ROOT / "k8s/profile.yaml")
NS = PROFILE.namespace
REDIS = ("studio", {"app.kubernetes.io/name": "redis"})
QDRANT = ("studio", {"app.kubernetes.io/name": "qdrant"})
KUBE_DNS = ("kube-system", {"k8s-app": "kube-dns"})
#: Addresses no pod that fetches client URLs may reach (IPv4 and IPv6 metadata, private, CGNAT, link-local, ULA).
FORBIDDEN = ["169.254.169.254", "fd00:ec2::254", "10.0.0.1", "10.200.3.4", "172.16.0.1", "172.31.255.254",
             "192.168.1.1", "100.64.0.1", "100.127.255.254", "169.254.1.1", "127.0.0.1", "fc00::1", "fe80::1",
             "::ffff:10.0.0.1", "64:ff9b::a00:1", "::1"]


def ray_pod(component: str) -> tuple[str, dict[str, str]]:
    """A Ray pod's namespace and labels as it runs (the template's and KubeRay's own)."""
    return NS, {"app.kubernetes.io/name": PROFILE.name, "app.kubernetes.io/component": component,
                "app.kubernetes.io/managed-by": "cluster.kuberay", "ray.io/is-ray-node": "yes"}


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    ok = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for e in selector.get("matchExpressions", []):
        value = labels.get(e["key"])
        ok &= {"In": value in e.get("values", []), "NotIn": value not in e.get("values", []),
               "Exists": e["key"] in labels, "DoesNotExist": e["key"] not in labels}[e["operator"]]
    return ok


def _port_ok(rule: dict[str, Any], port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("protocol", "TCP") == protocol and p.get("port") in (None, port) for p in ports)


def _peer_ok(peer: dict[str, Any], policy_ns: str, target: str | tuple[str, dict[str, str]]) -> bool:
    if isinstance(target, str):  # an address
        if "ipBlock" not in peer:
            return False
        ip = ipaddress.ip_address(target)
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", []))
    if "ipBlock" in peer:
        return False
    namespace, labels = target
    if "namespaceSelector" in peer:
        ns_ok = matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
    else:
        ns_ok = namespace == policy_ns
    return ns_ok and matches(peer.get("podSelector", {}), labels)


def policies(objects: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects.values() if o["kind"] == "NetworkPolicy"]


def may_connect(objects: dict[str, dict[str, Any]], source: tuple[str, dict[str, str]],
                target: str | tuple[str, dict[str, str]], port: int, protocol: str = "TCP") -> bool:
    """Whether ``source`` (a pod) may open a connection to ``target`` (an address or a pod) on ``port``:
    its egress policies (if any select it) and the target pod's ingress policies (if any) must allow it."""

    def selecting(pod: tuple[str, dict[str, str]], kind: str) -> list[dict[str, Any]]:
        return [p for p in policies(objects) if p["metadata"]["namespace"] == pod[0]
                and kind in p["spec"]["policyTypes"] and matches(p["spec"]["podSelector"], pod[1])]

    egress = selecting(source, "Egress")
    out_ok = not egress or any(
        _port_ok(rule, port, protocol) and any(_peer_ok(peer, p["metadata"]["namespace"], target) for peer in rule["to"])
        for p in egress for rule in p["spec"].get("egress", []))
    if isinstance(target, str):
        return out_ok
    ingress = selecting(target, "Ingress")
    in_ok = not ingress or any(
        _port_ok(rule, port, protocol) and any(_peer_ok(peer, p["metadata"]["namespace"], source) for peer in rule["from"])
        for p in ingress for rule in p["spec"].get("ingress", []))
    return out_ok and in_ok


GPUS = [ray_pod(gpu_component(g)) for g in GPU_TYPES]
HEAD_POD, CPU_POD = ray_pod(HEAD), ray_pod(CPU)
OBJECT_STORE, PUBLIC = "10.0.96.17", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]


def test_every_ray_pod_has_an_egress_policy(objects: dict[str, dict[str, Any]]) -> None:
    for pod in [HEAD_POD, CPU_POD, *GPUS]:
        selected = [p["metadata"]["name"] for p in policies(objects) if "Egress" in p["spec"]["policyTypes"]
                    and matches(p["spec"]["podSelector"], pod[1])]
        assert len(selected) == 1, (pod, selected)


def test_gpu_pods_reach_only_ray_pods_dns_and_the_object_store(objects: dict[str, dict[str, Any]]) -> None:
    for gpu in GPUS:
        assert may_connect(objects, gpu, HEAD_POD, 6379) and may_connect(objects, gpu, CPU_POD, 10005)
        assert may_connect(objects, gpu, KUBE_DNS, 53, "UDP") and may_connect(objects, gpu, KUBE_DNS, 53)
        assert may_connect(objects, gpu, OBJECT_STORE, 443)
        assert not may_connect(objects, gpu, OBJECT_STORE, 80)
        for address in [*PUBLIC, *FORBIDDEN]:
            assert not may_connect(objects, gpu, address, 443), address
        assert not may_connect(objects, gpu, QDRANT, 6333)  # the document store runs on the cpu pods
        assert not may_connect(objects, gpu, REDIS, 6379)
        assert not may_connect(objects, gpu, KUBE_DNS, 443)


def test_cpu_pods_reach_the_internet_but_no_private_metadata_redis_or_api_server(
        objects: dict[str, dict[str, Any]]) -> None:
    for address in PUBLIC:
        assert may_connect(objects, CPU_POD, address, 443) and may_connect(objects, CPU_POD, address, 80)
        assert not may_connect(objects, CPU_POD, address, 6379)  # internet_ports: 80, 443
    for address in FORBIDDEN:
        for port in (80, 443):
            assert not may_connect(objects, CPU_POD, address, port), address
    for cidr in PROFILE.network.api_server.cidrs:
        assert not may_connect(objects, CPU_POD, str(ipaddress.ip_network(cidr)[-1]), 443)
    assert not may_connect(objects, CPU_POD, REDIS, 6379)
    assert may_connect(objects, CPU_POD, OBJECT_STORE, 443) and may_connect(objects, CPU_POD, QDRANT, 6333)
    assert may_connect(objects, CPU_POD, HEAD_POD, 6379) and may_connect(objects, CPU_POD, GPUS[0], 10010)
    assert may_connect(objects, CPU_POD, KUBE_DNS, 53, "UDP")


def test_cpu_pods_internet_rule_leaves_out_every_non_public_range(objects: dict[str, dict[str, Any]]) -> None:
    (cpu,) = [p for p in policies(objects) if p["metadata"]["name"] == "studio-cpu-egress"]
    blocks = {peer["ipBlock"]["cidr"]: peer["ipBlock"]["except"] for rule in cpu["spec"]["egress"]
              for peer in rule["to"] if "ipBlock" in peer and "except" in peer["ipBlock"]}
    assert set(blocks) == {"0.0.0.0/0", "::/0"}
    for needed in ["169.254.169.254/32", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                   "169.254.0.0/16", "fd00:ec2::254/128", "fc00::/7", "fe80::/10"]:
        net = ipaddress.ip_network(needed)
        family = "0.0.0.0/0" if net.version == 4 else "::/0"
        assert any(net.subnet_of(ipaddress.ip_network(e)) for e in blocks[family]), needed  # type: ignore[arg-type]


def test_the_head_reaches_redis_and_the_api_server_but_not_the_internet(objects: dict[str, dict[str, Any]]) -> None:
    assert may_connect(objects, HEAD_POD, REDIS, 6379)
    assert may_connect(objects, HEAD_POD, "10.0.32.9", 443) and may_connect(objects, HEAD_POD, "172.20.0.1", 443)
    assert not may_connect(objects, HEAD_POD, "10.0.32.9", 80)
    assert may_connect(objects, HEAD_POD, CPU_POD, 8000) and may_connect(objects, HEAD_POD, KUBE_DNS, 53, "UDP")
    for address in [*PUBLIC, "169.254.169.254", "fd00:ec2::254"]:
        assert not may_connect(objects, HEAD_POD, address, 443), address
    assert not may_connect(objects, HEAD_POD, OBJECT_STORE, 443) and not may_connect(objects, HEAD_POD, QDRANT, 6333)


def test_redis_and_qdrant_accept_only_the_ray_pods_that_use_them(objects: dict[str, dict[str, Any]]) -> None:
    outsider = ("studio", {"app": "something-else"})
    elsewhere = ("default", ray_pod(HEAD)[1])  # the same labels in another namespace
    assert not may_connect(objects, outsider, REDIS, 6379) and not may_connect(objects, elsewhere, REDIS, 6379)
    assert not may_connect(objects, outsider, QDRANT, 6333)
    assert may_connect(objects, REDIS, REDIS, 26379)  # replication and sentinels among Redis's own pods
    assert may_connect(objects, QDRANT, QDRANT, 6335)  # Qdrant's cluster peers
    assert not may_connect(objects, HEAD_POD, REDIS, 6380)  # only the port of redis.address


def test_public_api_server_and_redis_addresses_are_left_out_of_the_internet(tmp_path: Path) -> None:
    def edit(p: dict[str, Any]) -> None:
        p["network"]["api_server"] = {"cidrs": ["52.94.1.0/24", "10.0.0.0/16"], "ports": [443]}
        p["network"]["redis"] = {"cidrs": ["3.4.5.6/32"]}

    objects = {k: yaml.safe_load(v) for k, v in render_with(tmp_path, edit).items() if k.endswith(".yaml")}
    assert not may_connect(objects, CPU_POD, "52.94.1.7", 443) and not may_connect(objects, CPU_POD, "3.4.5.6", 6379)
    assert may_connect(objects, HEAD_POD, "52.94.1.7", 443) and may_connect(objects, HEAD_POD, "3.4.5.6", 6379)
    assert may_connect(objects, CPU_POD, PUBLIC[0], 443)
    assert not any(o["metadata"]["name"] == "studio-redis" for o in policies(objects))  # outside: no pods to guard


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["network"].pop("object_store"), "network.object_store: Field required"),
    (lambda p: p["network"].update(object_store={"cidrs": ["10.0.0.0/33"], "ports": [443]}), "is not a CIDR block"),
    (lambda p: p["network"].update(object_store={"cidrs": ["10.0.0.0/8"]}), "object_store.ports"),
    (lambda p: p["network"].update(qdrant={"cidrs": ["10.1.0.0/16"], "pods": {"labels": {"a": "b"}}}),
     "exactly one of cidrs or pods"),
])
def test_bad_network_profiles_are_refused(tmp_path: Path, edit: Any, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        render_with(tmp_path, edit)


def test_the_evaluator_refuses_what_no_rule_allows() -> None:
    """The evaluator itself: a pod under a deny-all egress policy reaches nothing; an unselected pod anything."""
    deny = {"p": {"kind": "NetworkPolicy", "metadata": {"name": "deny", "namespace": NS},
                  "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": []}}}
    assert not may_connect(deny, CPU_POD, PUBLIC[0], 443)
    assert may_connect({}, CPU_POD, "169.254.169.254", 80)


def test_without_a_document_store_nobody_reaches_qdrant(tmp_path: Path) -> None:
    from cluster import kuberay

    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    args = config["applications"][0]["args"]
    args.pop("documents")
    args["chat"].pop("enhance_prompt", None)
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    objects = {k: yaml.safe_load(v) for k, v in kuberay.render(ROOT, config_path=path).items() if k.endswith(".yaml")}
    assert not any(o["metadata"]["name"] == "studio-qdrant" for o in policies(objects))
    assert not may_connect(objects, CPU_POD, QDRANT, 6333) and may_connect(objects, CPU_POD, OBJECT_STORE, 443)
