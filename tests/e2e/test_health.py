"""``GET get-status`` and the node's metrics endpoint against the running service."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from deployments.catalog import deployment_name
from ingress.wiring.local import load_app_config
from ingress.wiring.registry import ServiceConfig

pytestmark = pytest.mark.e2e

#: What must never reach a client: addresses, Ray's ids (hex), replica actor names.
INTERNALS = (re.compile(r"\d+\.\d+\.\d+\.\d+"), re.compile(r"[0-9a-f]{16,}"), re.compile(r"ServeReplica|actor|node", re.I))


def _family_deployments(service) -> list[str]:
    args = load_app_config(service.config)["args"]
    keys = ServiceConfig.model_validate({**args, "models_dir": "/nonexistent"}).deployment_keys()
    return [deployment_name(family, gpu) for family, gpu in keys]


def test_get_status_lists_every_family_deployment_ready_without_a_key(service):
    r = httpx.get(f"{service.api}/get-status", timeout=30)  # no Authorization header
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert list(body["deployments"]) == [*_family_deployments(service), "documents", "chat"]
    for name, d in body["deployments"].items():
        family, _, gpu = name.rpartition("-") if name not in ("documents", "chat") else (name, "", "")
        assert (d["family"], d["gpu"]) == (family, gpu)
        assert isinstance(d["replicas"], int) and isinstance(d["target"], int) and d["available"] is True
        if d["status"] == "ready":
            assert d["replicas"] >= 1 and d["target"] >= 1
        else:  # a GPU type whose family autoscales from zero (serve_config.yaml) and had no request yet
            assert (d["status"], d["replicas"], d["target"]) == ("scaled_to_zero", 0, 0), (name, d)
    assert body["deployments"]["sd15-lora-a10g"]["target"] == 2  # the two-replica family of the e2e config
    for pattern in INTERNALS:
        assert not pattern.search(r.text), pattern.pattern


def test_a_probe_storm_is_cheap(service):
    with httpx.Client(timeout=30) as client:
        t0 = time.monotonic()
        codes = [client.get(f"{service.api}/get-status").status_code for _ in range(50)]
        elapsed = time.monotonic() - t0
    assert codes == [200] * 50
    assert elapsed < 10, f"50 probes took {elapsed:.1f} s"


def test_serve_metrics_reach_the_metrics_endpoint(service, client):
    assert service.metrics_url is not None and service.metrics_url.startswith("http://127.0.0.1:")
    assert client.get("/apps").status_code == 200
    deadline = time.monotonic() + 30  # Ray exports on an interval (the launcher sets 2 s)
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(service.metrics_url, timeout=10).text
        if 'route="/api/v1/studio/apps"' in text and "ray_serve_num_http_requests_total" in text:
            break
        time.sleep(1)
    assert "ray_serve_num_http_requests_total" in text
    assert 'route="/api/v1/studio/apps"' in text
