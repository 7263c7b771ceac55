"""The coordinator's decisions, without a cluster: attempts, quarantine, cancel, retention."""

import os
import time
from pathlib import Path

import pytest
import yaml

from ingress.coordinator import TaskCoordinator
from storage.tasks import TaskRecord, new_task_id

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def coordinator(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_STORAGE_LOCAL_ROOT", str(tmp_path / "objects"))
    monkeypatch.setenv("STUDIO_RETENTION_SECONDS", "3600")
    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    return TaskCoordinator(args, handles={}, start_loop=False)


def submitted(c, **kw):
    tid = new_task_id()
    c.tasks.create(TaskRecord(task_id=tid, tenant="t", app_id="ap-sd15-txt2img", route="getTextToImage",
                              family="sd15", gpu="a10g", max_attempts=2, **kw), {"app_id": "ap-sd15-txt2img"})
    return tid


def test_attempts_are_counted_and_leased(coordinator):
    tid = submitted(coordinator)
    attempt, record = coordinator._take_attempt("t", tid)
    assert attempt == 1 and record.lease_expires_at > time.time()
    assert coordinator._take_attempt("t", tid)[0] is None  # leased: not again until it lapses
    coordinator._give_back("t", tid, 1)  # the deployment was full
    assert coordinator.tasks.get("t", tid).attempts == 0


def test_lost_workers_are_retried_then_quarantined(coordinator):
    tid = submitted(coordinator)
    for attempt in (1, 2):
        assert coordinator._take_attempt("t", tid)[0] == attempt
        coordinator.tasks.update("t", tid, lambda r: r.move("STARTED"))
        coordinator._expire("t", tid, attempt)  # its worker died
    _, record = coordinator._take_attempt("t", tid)
    assert record.status == "FAILURE" and record.error == "WorkerLost"
    assert "2 attempts" in record.error_data


def test_cancelled_task_with_lost_worker_is_revoked_not_retried(coordinator):
    tid = submitted(coordinator)
    coordinator._take_attempt("t", tid)
    coordinator.tasks.update("t", tid, lambda r: (r.move("STARTED"), setattr(r, "cancel_requested", True)))
    coordinator._expire("t", tid, 1)
    attempt, record = coordinator._take_attempt("t", tid)
    assert attempt is None and record.status == "REVOKED"


def test_retention_sweep_deletes_only_old_tenant_objects(coordinator):
    store = coordinator.store
    store.put("tenants/t/images/old/0.png", b"x", "image/png")
    store.put("tenants/t/images/new/0.png", b"x", "image/png")
    old = time.time() - 7200
    os.utime(store.root / "data/tenants/t/images/old/0.png", (old, old))
    assert coordinator.sweep_expired() == 1
    assert not store.exists("tenants/t/images/old/0.png") and store.exists("tenants/t/images/new/0.png")
