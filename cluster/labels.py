"""Names, labels and selectors shared by every generated object."""

from __future__ import annotations

from typing import Any

from cluster.profile import Profile

HEAD, CPU = "ray-head", "ray-worker-cpu"


def gpu_component(gpu: str) -> str:
    """The component label of a GPU type's worker pods."""
    return f"ray-worker-{gpu}"


def labels(profile: Profile, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": profile.name, "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "cluster.kuberay"}


def meta(profile: Profile, name: str, component: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": profile.namespace, "labels": labels(profile, component), **extra}


def ray_pods(profile: Profile) -> dict[str, Any]:
    """Every Ray pod of this service (KubeRay labels each Ray pod ``ray.io/is-ray-node: yes``)."""
    return {"matchLabels": {"app.kubernetes.io/name": profile.name, "ray.io/is-ray-node": "yes"}}


def pods_of(profile: Profile, *components: str) -> dict[str, Any]:
    """The Ray pods of the given components (``HEAD``, ``CPU``, :func:`gpu_component`)."""
    selector: dict[str, Any] = {"matchLabels": {"app.kubernetes.io/name": profile.name}}
    if len(components) == 1:
        selector["matchLabels"]["app.kubernetes.io/component"] = components[0]
    else:
        selector["matchExpressions"] = [{"key": "app.kubernetes.io/component", "operator": "In",
                                         "values": list(components)}]
    return selector
