"""The generated manifests, rendered once for every test module of tests/cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster import kuberay
from cluster.manifests import BUILDER

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def files() -> dict[str, str]:
    return kuberay.render(ROOT)


@pytest.fixture(scope="session")
def objects(files: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {p: yaml.safe_load(t) for p, t in files.items() if p.endswith(".yaml")}


@pytest.fixture(scope="session")
def rayservice(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (service,) = [o for o in objects.values() if o["kind"] == "RayService"]
    return service


@pytest.fixture(scope="session")
def serve_config(rayservice: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def builder_app(config: dict[str, Any]) -> dict[str, Any]:
    """The studio application of a Serve config."""
    return next(a for a in config["applications"] if a["import_path"] == BUILDER)


def groups(rayservice: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``head`` and each worker group's name -> its group spec."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}


def render_with(tmp_path: Path, edit: Any) -> dict[str, str]:
    """Render with k8s/profile.yaml changed by ``edit(profile_dict)``."""
    profile = yaml.safe_load((ROOT / "k8s/profile.yaml").read_text())
    edit(profile)
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return kuberay.render(ROOT, profile_path=path)
