"""Request metrics at the ingress: every API request is counted once, by route
template (never the raw path), status code, and the app the handler resolved."""

from __future__ import annotations

from fastapi.testclient import TestClient

from deployments.metrics import STUDIO_METRICS
from ingress.contract.api import create_api
from tests.ingress.contract.test_openapi import AUTH, _studio


def test_requests_failures_and_images_are_labelled(tmp_path, monkeypatch):
    seen: list[tuple] = []
    monkeypatch.setattr(STUDIO_METRICS, "request", lambda labels, route, code, s: seen.append(("req", route, code,
                                                                                                dict(labels))))
    monkeypatch.setattr(STUDIO_METRICS, "failure", lambda labels, error: seen.append(("fail", error)))
    monkeypatch.setattr(STUDIO_METRICS, "images", lambda labels, n: seen.append(("img", n, labels["app_id"])))
    client = TestClient(create_api(_studio(tmp_path)))
    body = {"app_id": "ap-sd15-txt2img", "prompt": "x", "height": 256, "width": 256, "batch": 2}
    assert client.post("/api/v1/studio/getTextToImage", json=body, headers=AUTH).status_code == 200
    assert client.post("/api/v1/studio/getTextToImage", json={**body, "height": 100}, headers=AUTH).status_code == 422
    assert client.get("/api/v1/studio/status/abc123", headers=AUTH).status_code == 404
    assert client.get("/docs").status_code == 200  # not an API route: not counted
    labels = {"app_id": "ap-sd15-txt2img", "family": "sd15", "gpu": "a10g", "tenant": "t"}
    assert seen[0] == ("img", 2, "ap-sd15-txt2img")
    assert seen[1][:3] == ("req", "/getTextToImage", 200) and seen[1][3]["app_id"] == "ap-sd15-txt2img"
    assert seen[1][3]["family"] == labels["family"]
    # The bad height is refused before an app is resolved: counted, without app labels.
    assert seen[2] == ("req", "/getTextToImage", 422, {})
    assert seen[3] == ("req", "/status/{task_id}", 404, {})
    assert len(seen) == 4
