"""No secret value in the head's containers nor in the Serve config: every secret is a file in its
role's directory, mounted on the worker pods where that role's deployments run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.manifests import PLACEHOLDER
from cluster.profile import ProfileError, load_profile
from cluster.secret_files import SECRETS_DIR, volume_name
from ingress.wiring.secrets import ROLE_FILES, SECRET_VARS, SECRETS_DIR_ARG
from tests.cluster.conftest import ROOT, builder_app, groups, render_with

PROFILE = load_profile(ROOT / "k8s/profile.yaml")
#: Where each role's deployments run with the repository's serve_config.yaml: the ingress, coordinator,
#: chat and documents services and the ElevenLabs family (no GPU) on the cpu group; the rest on GPUs.
EXPECTED_ROLES = {"head": set(), "cpu": {"ingress", "coordinator", "chat", "documents", "speech-vendor"},
                  "a10g": {"family"}, "a100": {"family"}, "h100": {"family"}}


def _all_containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    spec = group["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _secret_sources(volume: dict[str, Any]) -> list[dict[str, Any]]:
    if "secret" in volume:
        return [{"name": volume["secret"]["secretName"], **volume["secret"]}]
    return [s["secret"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s]


def test_no_container_has_a_secret_in_its_environment(rayservice: dict[str, Any]) -> None:
    options = rayservice["spec"]["rayClusterConfig"]["autoscalerOptions"]
    envs = [c.get("env", []) for g in groups(rayservice).values() for c in _all_containers(g)] + [options.get("env", [])]
    for env in envs:
        for var in env:
            assert var["name"] not in SECRET_VARS and "valueFrom" not in var, var
    for container in [*(c for g in groups(rayservice).values() for c in _all_containers(g)), options]:
        assert "envFrom" not in container
    assert PLACEHOLDER not in json.dumps(rayservice)  # the Secret templates' values appear nowhere else


def test_the_head_mounts_no_secret(rayservice: dict[str, Any]) -> None:
    head = groups(rayservice)["head"]["template"]["spec"]
    assert [v["name"] for v in head["volumes"] if _secret_sources(v)] == []
    assert not any(m["mountPath"].startswith(SECRETS_DIR) for c in head["containers"] for m in c["volumeMounts"])


def test_the_serve_config_holds_paths_never_values(rayservice: dict[str, Any], serve_config: dict[str, Any]) -> None:
    app = builder_app(serve_config)
    assert not set(SECRET_VARS) & set(app["runtime_env"]["env_vars"])
    assert app["args"][SECRETS_DIR_ARG] == SECRETS_DIR
    text = rayservice["spec"]["serveConfigV2"]
    assert PLACEHOLDER not in text and "whsec_" not in text and "secretKeyRef" not in text


def test_the_redis_password_is_the_one_secret_kuberay_puts_in_the_head(rayservice: dict[str, Any]) -> None:
    """KubeRay copies gcsFaultToleranceOptions.redisPassword into the head's REDIS_PASSWORD (no other way
    exists in the CRD); the manifest names the Secret, never a value (docs/cluster-security.md)."""
    password = rayservice["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]["redisPassword"]
    assert password == {"valueFrom": {"secretKeyRef": {"name": PROFILE.redis.password_secret.name,
                                                       "key": PROFILE.redis.password_secret.key}}}


def test_each_group_mounts_only_the_roles_that_run_there(rayservice: dict[str, Any]) -> None:
    found = {}
    for name, group in groups(rayservice).items():
        spec = group["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"] if _secret_sources(v)}
        roles = {v.removeprefix("secrets-") for v in volumes}
        found[name] = roles
        (container,) = spec["containers"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        for role in roles:
            volume = volumes[volume_name(role)]
            assert mounts[volume_name(role)] == {"name": volume_name(role), "mountPath": f"{SECRETS_DIR}/{role}",
                                                 "readOnly": True}
            files = [item["path"] for s in _secret_sources(volume) for item in s["items"]]
            assert sorted(files) == sorted(ROLE_FILES[role]), role  # exactly the role's files
            assert volume["projected"]["defaultMode"] == 0o440
    assert found == EXPECTED_ROLES


def test_role_files_come_from_the_named_secrets_keys(rayservice: dict[str, Any]) -> None:
    cpu = {v["name"]: v for v in groups(rayservice)["cpu"]["template"]["spec"]["volumes"]}
    s = PROFILE.secrets
    sources = {(src["name"], item["key"], item["path"], src.get("optional", False))
               for role in EXPECTED_ROLES["cpu"] for src in _secret_sources(cpu[volume_name(role)]) for item in src["items"]}
    assert (s.api_keys, "api-keys.json", "api-keys.json", False) in sources
    assert (s.webhook_secrets, "webhook-secrets.json", "webhook-secrets.json", True) in sources
    assert (s.s3, "secret-access-key", "STUDIO_STORAGE_S3_SECRET_ACCESS_KEY", False) in sources
    assert (s.vendors, "STUDIO_ELEVENLABS_API_KEY", "STUDIO_ELEVENLABS_API_KEY", True) in sources
    assert (s.vendors, "STUDIO_QDRANT_API_KEY", "STUDIO_QDRANT_API_KEY", True) in sources


def test_secret_templates_name_every_key_the_volumes_read(objects: dict[str, dict[str, Any]],
                                                         rayservice: dict[str, Any]) -> None:
    templates = {o["metadata"]["name"]: set(o["stringData"]) for o in objects.values() if o["kind"] == "Secret"}
    for group in groups(rayservice).values():
        for volume in group["template"]["spec"]["volumes"]:
            for src in _secret_sources(volume):
                assert {item["key"] for item in src["items"]} <= templates[src["name"]], src["name"]


def test_a_cluster_refuses_loopback_inputs(tmp_path: Path) -> None:
    for value in ("true", "1", "yes", "on", "True", " y ", "maybe"):
        def edit(p: dict[str, Any], value: str = value) -> None:
            p["serve_env"]["STUDIO_ALLOW_LOOPBACK_INPUTS"] = value

        with pytest.raises(ProfileError, match="serve_env.*STUDIO_ALLOW_LOOPBACK_INPUTS.*tests only"):
            render_with(tmp_path, edit)
    render_with(tmp_path, lambda p: p["serve_env"].update(STUDIO_ALLOW_LOOPBACK_INPUTS="false"))


def test_a_cluster_refuses_loopback_inputs_from_serve_config(tmp_path: Path) -> None:
    from cluster import kuberay

    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    builder_app(config)["runtime_env"]["env_vars"]["STUDIO_ALLOW_LOOPBACK_INPUTS"] = "1"
    path = tmp_path / "serve_config.yaml"
    path.write_text(json.dumps(config))
    with pytest.raises(ProfileError, match="runtime_env: STUDIO_ALLOW_LOOPBACK_INPUTS='1'"):
        kuberay.render(ROOT, config_path=path)
