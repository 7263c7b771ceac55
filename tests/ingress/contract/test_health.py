"""``GET get-status`` in process: Serve's details (Ray's own schema classes) mapped to the
public shape, the 200/503 rule, one read per second under a probe storm, and no internals."""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from ray.serve.schema import ApplicationDetails, DeploymentDetails, DeploymentSchema, ReplicaDetails

from ingress.contract.api import PREFIX, Studio, create_api
from ingress.contract.auth import KeyRing
from ingress.contract.routes import health
from ingress.contract.routes.health import ServeView, assess
from ingress.wiring.registry import Registry, ServiceConfig
from ingress.wiring.settings import IngressSettings
from storage.local import LocalObjectStore

ROOT = Path(__file__).resolve().parents[3]
ARGS = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
KEYS = ServiceConfig.model_validate({**ARGS, "models_dir": "/nonexistent"}).deployment_keys()
NAMES = [f"{family}-{gpu}" for family, gpu in KEYS]
SERVICES = ["documents", "chat"]  # serve_config.yaml's document store and chat service
#: What must never reach a client: ids, addresses, Serve's own messages.
SECRETS = ("replica-id-x", "node-id-y", "actor-id-z", "10.1.2.3", "Traceback", "boom at 10.9.9.9")


def replica(state: str) -> ReplicaDetails:
    return ReplicaDetails(replica_id="replica-id-x", state=state, start_time_s=1.0, node_id="node-id-y",
                          node_ip="10.1.2.3", actor_id="actor-id-z", pid=4242)


def deployment(name: str, status: str = "HEALTHY", states: tuple[str, ...] = ("RUNNING",), target: int | None = None,
               autoscaling: dict | None = None) -> DeploymentDetails:
    config = DeploymentSchema(name=name, autoscaling_config=autoscaling) if autoscaling else DeploymentSchema(name=name)
    return DeploymentDetails(
        name=name, status=status, status_trigger="CONFIG_UPDATE_COMPLETED", message="boom at 10.9.9.9",
        deployment_config=config, target_num_replicas=len(states) if target is None else target,
        required_resources={"a10g": 1}, replicas=[replica(s) for s in states],
    )


def application(deployments: dict[str, DeploymentDetails], status: str = "RUNNING") -> ApplicationDetails:
    return ApplicationDetails(
        name="studio", route_prefix="/", docs_path="/docs", status=status, message="boom at 10.9.9.9",
        last_deployed_time_s=1.0, source="imperative", deployments=deployments, external_scaler_enabled=False,
    )


def healthy(**overrides: DeploymentDetails) -> ApplicationDetails:
    found = {name: deployment(name) for name in [*NAMES, *SERVICES]}
    found.update({k.replace("_", "-"): v for k, v in overrides.items()})
    found["ingress"] = deployment("ingress")
    return application(found)


def test_every_family_deployment_running_is_ready():
    h = assess(KEYS, healthy())
    assert h.status == "ready" and list(h.deployments) == NAMES
    d = h.deployments["sd15-a10g"]
    assert (d.family, d.gpu, d.status, d.replicas, d.target, d.available) == ("sd15", "a10g", "ready", 1, 1, True)
    assert "ingress" not in h.deployments and "tasks" not in h.deployments


@pytest.mark.parametrize(("detail", "status", "replicas", "target", "available"), [
    # the autoscaler took it to zero: it starts a replica on the next request
    (deployment("sd15-a10g", states=(), target=0, autoscaling={"min_replicas": 0, "max_replicas": 2}),
     "scaled_to_zero", 0, 0, True),
    # woken from zero: a request waits for the replica
    (deployment("sd15-a10g", "UPSCALING", ("STARTING",), 1, {"min_replicas": 0, "max_replicas": 2}),
     "starting", 0, 1, True),
    # a fixed deployment with no replica up yet cannot take work
    (deployment("sd15-a10g", "UPDATING", ("STARTING",), 1), "starting", 0, 1, False),
    # one of two replicas failed its health check: the other still serves
    (deployment("sd15-a10g", "UNHEALTHY", ("RUNNING", "STOPPING"), 2), "ready", 1, 2, True),
    (deployment("sd15-a10g", "UNHEALTHY", ("STOPPING",), 1), "unhealthy", 0, 1, False),
    (deployment("sd15-a10g", "DEPLOY_FAILED", (), 1), "unhealthy", 0, 1, False),
    # up to target while one more starts
    (deployment("sd15-a10g", "UPSCALING", ("RUNNING", "RUNNING", "STARTING"), 3), "ready", 2, 3, True),
])
def test_serve_states_map_to_the_public_ones(detail, status, replicas, target, available):
    h = assess(KEYS, healthy(sd15_a10g=detail))
    d = h.deployments["sd15-a10g"]
    assert (d.status, d.replicas, d.target, d.available) == (status, replicas, target, available)
    assert h.status == ("ready" if available else "degraded")


def test_a_deployment_serve_does_not_have_yet():
    found = {name: deployment(name) for name in NAMES[1:]}
    assert assess(KEYS, application(found, status="DEPLOYING")).deployments[NAMES[0]].status == "starting"
    h = assess(KEYS, application(found))
    assert h.status == "degraded" and h.deployments[NAMES[0]].status == "unhealthy"
    assert assess(KEYS, None).status == "degraded"


# -- the route --------------------------------------------------------------------

def _studio(root: Path) -> Studio:
    return Studio(
        registry=Registry(ServiceConfig.model_validate({**ARGS, "models_dir": str(root)})),
        keys=KeyRing({"sk-health-test": "tenant-a"}), dispatcher=None,  # type: ignore[arg-type]
        store=LocalObjectStore(root, "http://testserver", b"health-test-secret"), settings=IngressSettings(),
        url_expiry_seconds=3600,
    )


class Reads:
    """Stands in for the controller call: counts calls, can be slow or fail."""

    def __init__(self, result=None, delay: float = 0.0, error: Exception | None = None):
        self.result, self.delay, self.error, self.calls = result, delay, error, 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.result


def _client(reads: Reads, *, ttl: float = 1.0, timeout: float = 5.0, monkeypatch) -> TestClient:
    made = ServeView(reads, ttl=ttl, timeout=timeout)
    monkeypatch.setattr(health, "ServeView", lambda: made)
    root = Path(tempfile.mkdtemp(prefix="studio-health-"))
    return TestClient(create_api(_studio(root)))


def _no_internals(text: str) -> None:
    for word in SECRETS:
        assert word not in text, word


def test_200_without_a_key_and_the_public_shape(monkeypatch):
    client = _client(Reads(healthy()), monkeypatch=monkeypatch)
    r = client.get(f"{PREFIX}/get-status")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["status"] == "ready" and list(body["deployments"]) == [*NAMES, *SERVICES]
    assert body["deployments"]["sdxl-a100"] == {"family": "sdxl", "gpu": "a100", "status": "ready",
                                                "replicas": 1, "target": 1, "available": True}
    assert body["deployments"]["chat"] == {"family": "chat", "gpu": "", "status": "ready", "replicas": 1,
                                           "target": 1, "available": True}
    _no_internals(r.text)


def test_a_service_deployment_down_is_degraded(monkeypatch):
    client = _client(Reads(healthy(documents=deployment("documents", "UNHEALTHY", (), 1))), monkeypatch=monkeypatch)
    r = client.get(f"{PREFIX}/get-status")
    assert r.status_code == 503 and r.json()["deployments"]["documents"]["status"] == "unhealthy"


def test_503_when_a_family_cannot_take_work(monkeypatch):
    client = _client(Reads(healthy(sdxl_a100=deployment("sdxl-a100", "UNHEALTHY", (), 1))), monkeypatch=monkeypatch)
    r = client.get(f"{PREFIX}/get-status")
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    assert r.json()["status"] == "degraded" and r.json()["deployments"]["sdxl-a100"]["status"] == "unhealthy"
    _no_internals(r.text)


def test_a_failed_read_is_unknown_without_its_text(monkeypatch):
    client = _client(Reads(error=RuntimeError("boom at 10.9.9.9 node-id-y")), monkeypatch=monkeypatch)
    r = client.get(f"{PREFIX}/get-status")
    assert r.status_code == 503 and r.json() == {"status": "unknown", "deployments": {}}
    _no_internals(r.text)


def test_a_slow_read_answers_unknown_in_time(monkeypatch):
    reads = Reads(healthy(), delay=1.0)
    view = ServeView(reads, timeout=0.2)

    async def run() -> None:
        t0 = time.monotonic()
        assert await view.get() == (False, None)
        assert time.monotonic() - t0 < 0.6
        assert (await asyncio.gather(view.get(), view.get())) == [(False, None)] * 2
        assert reads.calls == 1  # later callers wait on the same read, not a new one
        await asyncio.sleep(0.7)
        ok, app = await view.get()  # the read finished meanwhile: its answer is cached
        assert ok and app is not None and reads.calls == 1

    asyncio.run(run())
    with _client(Reads(healthy(), delay=1.0), timeout=0.2, monkeypatch=monkeypatch) as client:
        r = client.get(f"{PREFIX}/get-status")
        assert r.status_code == 503 and r.json() == {"status": "unknown", "deployments": {}}


def test_outside_ray_it_answers_unknown_and_starts_no_cluster():
    import ray

    view = ServeView()  # the real read
    ok, app = asyncio.run(view.get())
    assert (ok, app) == (False, None) and not ray.is_initialized()


def test_a_probe_storm_costs_one_read_per_ttl():
    reads = Reads(healthy(), delay=0.1)
    view = ServeView(reads, ttl=0.5)

    async def storm(n: int) -> list:
        return await asyncio.gather(*(view.get() for _ in range(n)))

    async def run() -> None:
        first = await storm(50)  # all of them wait on one read
        assert reads.calls == 1 and all(ok for ok, _ in first)
        await storm(50)  # cached
        assert reads.calls == 1
        await asyncio.sleep(0.55)
        await storm(50)
        assert reads.calls == 2

    asyncio.run(run())


def test_a_failure_is_cached_too():
    reads = Reads(error=RuntimeError("down"))
    view = ServeView(reads, ttl=60)

    async def run() -> None:
        for _ in range(5):
            assert await view.get() == (False, None)

    asyncio.run(run())
    assert reads.calls == 1


def test_published_in_openapi_without_a_key(monkeypatch):
    spec = _client(Reads(healthy()), monkeypatch=monkeypatch).app.openapi()  # type: ignore[attr-defined]
    op = spec["paths"][f"{PREFIX}/get-status"]["get"]
    assert op.get("security") is None and set(op["responses"]) == {"200", "503"}
    schema = json.dumps(spec["components"]["schemas"]["DeploymentHealth"])
    assert "scaled_to_zero" in schema


def test_the_serve_api_it_reads_is_there():
    # read_serve uses the controller client serve.status() uses; an upgrade that moves it fails here.
    from ray.serve._private.client import ServeControllerClient
    from ray.serve.context import _get_global_client

    assert callable(_get_global_client) and callable(ServeControllerClient.get_serve_details)
