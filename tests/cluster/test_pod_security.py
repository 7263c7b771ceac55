"""Every pod the manifests make meets the "restricted" Pod Security Standard, runs on a read-only
root with writable scratch where Ray writes, holds no service-account token (but the autoscaler),
and runs an image pinned by digest."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cluster.pods import SERVICE_ACCOUNT_DIR, WRITABLE
from cluster.profile import IMAGE_BY_DIGEST, ProfileError
from tests.cluster.conftest import groups, render_with

#: Volume types the restricted profile allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                      "secret"}


def pod_specs(objects: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) for every pod spec anywhere in any generated object."""
    found: list[tuple[str, dict[str, Any]]] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            if "containers" in value and isinstance(value["containers"], list):
                found.append((where, value))
            for key, sub in value.items():
                walk(sub, f"{where}.{key}")
        elif isinstance(value, list):
            for i, sub in enumerate(value):
                walk(sub, f"{where}[{i}]")

    for path, obj in objects.items():
        walk(obj, path)
    return found


def containers(objects: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, container, its pod spec) for every container, KubeRay's autoscaler sidecar as KubeRay
    builds it (autoscalerOptions' image, securityContext and volumeMounts) and its wait-gcs-ready init
    container (a copy of the Ray container's securityContext and volume mounts) included."""
    out = []
    for where, spec in pod_specs(objects):
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            out.append((f"{where}/{c['name']}", c, spec))
            out.append((f"{where}/wait-gcs-ready", {**c, "name": "wait-gcs-ready"}, spec))
    for path, obj in objects.items():
        if obj["kind"] == "RayService":
            options = obj["spec"]["rayClusterConfig"]["autoscalerOptions"]
            head = obj["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
            out.append((f"{path}/autoscaler", {"name": "autoscaler", **options}, head))
    return out


def test_every_pod_spec_is_found(objects: dict[str, dict[str, Any]], rayservice: dict[str, Any]) -> None:
    specs = pod_specs(objects)
    assert len(specs) == len(groups(rayservice)) >= 4  # the head, cpu and one per GPU type; nothing else runs pods


def test_every_pod_meets_the_restricted_standard(objects: dict[str, dict[str, Any]]) -> None:
    for where, spec in pod_specs(objects):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0 and pod.get("runAsGroup") != 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC", "hostUsers")), where
        for volume in spec["volumes"]:
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUMES, f"{where}: volume {volume['name']} is {kinds}"
    checked = 0
    for where, c, spec in containers(objects):
        sc, pod = c["securityContext"], spec["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["capabilities"]["drop"] == ["ALL"] and set(sc["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}
        assert not sc.get("privileged"), where
        assert sc.get("runAsNonRoot", pod["runAsNonRoot"]) is True and sc.get("runAsUser", pod["runAsUser"]) != 0
        assert sc.get("seccompProfile", pod["seccompProfile"]) == {"type": "RuntimeDefault"}, where
        assert sc.get("procMount", "Default") == "Default" and "hostPort" not in str(c.get("ports", []))
        checked += 1
    assert checked == 2 * len(pod_specs(objects)) + 1  # each Ray container, its init container; the autoscaler


def test_namespace_enforces_the_restricted_standard(objects: dict[str, dict[str, Any]]) -> None:
    (ns,) = [o for o in objects.values() if o["kind"] == "Namespace"]
    for mode in ("enforce", "warn", "audit"):
        assert ns["metadata"]["labels"][f"pod-security.kubernetes.io/{mode}"] == "restricted"


def test_root_filesystems_are_read_only_with_writable_scratch(objects: dict[str, dict[str, Any]]) -> None:
    for where, c, spec in containers(objects):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        for name, path in WRITABLE.items():  # Ray's session dir, /tmp and $HOME (caches)
            assert mounts[path]["name"] == name and not mounts[path].get("readOnly"), f"{where}: {path}"
            assert volumes[name] == {"name": name, "emptyDir": {}}, where
        # Nothing else writable: every other mount is read-only.
        assert all(m.get("readOnly") for p, m in mounts.items() if p not in WRITABLE.values()), where
    # KubeRay shares a volume named ray-logs at /tmp/ray between Ray and the autoscaler: ours is that one.
    assert WRITABLE["ray-logs"] == "/tmp/ray" and set(WRITABLE.values()) == {"/tmp", "/tmp/ray", "/home/ray"}


def test_only_the_autoscaler_holds_an_api_token(objects: dict[str, dict[str, Any]]) -> None:
    for where, spec in pod_specs(objects):
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["enableServiceLinks"] is False, where
    holders = []
    for _where, c, spec in containers(objects):
        token_volumes = {v["name"] for v in spec["volumes"]
                         if any("serviceAccountToken" in s for s in v.get("projected", {}).get("sources", []))}
        mounted = [m for m in c["volumeMounts"] if m["name"] in token_volumes]
        if mounted:
            holders.append(c["name"])
            assert mounted == [{"name": mounted[0]["name"], "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True}]
    assert holders == ["autoscaler"]  # the Ray containers (GCS, controller, proxies, replicas) have none


def test_every_image_is_pinned_by_digest(objects: dict[str, dict[str, Any]]) -> None:
    images = [c["image"] for _, c, _ in containers(objects)]
    assert images and all(re.fullmatch(IMAGE_BY_DIGEST, image) for image in images), images


@pytest.mark.parametrize("field", ["image", "autoscaler_image"])
def test_a_tag_alone_is_refused_unless_allowed_for_development(tmp_path: Path, field: str) -> None:
    def tag(p: dict[str, Any]) -> None:
        p[field] = "registry.example.com/studio-serve:0.1.0"

    with pytest.raises(ProfileError, match=f"{field} .* is not pinned by digest"):
        render_with(tmp_path, tag)

    def allowed(p: dict[str, Any]) -> None:
        tag(p)
        p["allow_tag_images"] = True

    files = render_with(tmp_path, allowed)
    assert "registry.example.com/studio-serve:0.1.0" in files["k8s/generated/20-rayservice.yaml"]


def test_the_autoscaler_image_can_differ(tmp_path: Path) -> None:
    other = "registry.example.com/ray-autoscaler@sha256:" + "a" * 64

    def edit(p: dict[str, Any]) -> None:
        p["autoscaler_image"] = other

    files = render_with(tmp_path, edit)
    assert f"image: {other}" in files["k8s/generated/20-rayservice.yaml"]
