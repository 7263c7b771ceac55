"""The coordinator's decisions, without a cluster: attempts, leases on one clock, lost
workers versus job errors, deadlines, webhook delivery that one tenant cannot stall,
and retention."""

import asyncio
import hashlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ray import exceptions as ray_errors
from ray.serve.exceptions import BackPressureError

from deployments.errors import InvalidJobError
from deployments.tasks import TaskLease
from deployments.types import TaskRef
from ingress.dispatch import classify_ray_error as classify_failure
from ingress.tasks.coordinator import TaskCoordinator
from ingress.tasks.webhooks import new_secret
from storage.tasks import TaskRecord, new_task_id, outbox_key, record_key
from tests.support.peers import silent_server

pytestmark = pytest.mark.timeout(60)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def coordinator(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_STORAGE_LOCAL_ROOT", str(tmp_path / "objects"))
    monkeypatch.setenv("STUDIO_RETENTION_SECONDS", "3600")
    monkeypatch.setenv("STUDIO_ALLOW_LOOPBACK_INPUTS", "true")
    c = TaskCoordinator(handles={}, start_loop=False)
    c._clock = FakeClock()
    return c


def submitted(c, tenant="t", deadline_at=None, **kw):
    tid = new_task_id()
    c.tasks.create(TaskRecord(task_id=tid, tenant=tenant, app_id="ap-sd15-txt2img", route="getTextToImage",
                              family="sd15", gpu="a10g", deployment="sd15-a10g",
                              max_attempts=2, deadline_at=deadline_at or time.time() + 600,
                              **kw), {})
    return tid


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return asyncio.ensure_future(self.fn(*args))


class FakeHandle:
    """A family deployment's handle whose ``run_task`` is ``fn(ref)``."""

    def __init__(self, fn):
        self.run_task = _Method(fn)
        self.calls = []


def test_attempts_are_counted_and_leased(coordinator):
    tid = submitted(coordinator)
    attempt, record = coordinator._take_attempt("t", tid)
    assert attempt == 1 and record.lease_owner == "dispatch" and record.lease_seconds > 0
    assert coordinator._take_attempt("t", tid)[0] is None  # leased: not again until it lapses
    coordinator._give_back("t", tid, 1)  # the deployment was full: that attempt does not count
    record = coordinator.tasks.get("t", tid)
    assert (record.attempts, record.unclaimed, record.runs) == (1, 1, 0)
    assert coordinator._take_attempt("t", tid)[0] == 2  # numbers are never reused


def test_a_lease_lapses_only_after_standing_still_for_its_length_on_our_clock(coordinator):
    c, clock = coordinator, coordinator._clock
    tid = submitted(c)
    c.tasks.update("t", tid, lambda r: (setattr(r, "attempts", 1), r.hold_lease("w1", 10), r.move("STARTED")))
    assert c._take_attempt("t", tid)[0] is None  # first sight: the lease counts from now, whatever its writer's clock
    clock.now += 9
    c.tasks.update("t", tid, lambda r: r.hold_lease("w1", 10))  # a renewal restarts it
    clock.now += 9
    assert c._take_attempt("t", tid)[0] is None
    clock.now += 10.5  # 19.5 s since the renewal was seen
    attempt, record = c._take_attempt("t", tid)
    assert attempt == 2 and any("w1 lost" in (h.note or "") for h in record.history)


def start(c, tid, owner="w"):
    c.tasks.update("t", tid, lambda r: (r.hold_lease(owner, 20), r.move("STARTED")))


def test_lost_workers_are_retried_then_quarantined(coordinator):
    tid = submitted(coordinator)
    for attempt in (1, 2):
        assert coordinator._take_attempt("t", tid)[0] == attempt
        start(coordinator, tid)
        assert coordinator._after_lost_call("t", tid, attempt, dead=True)  # its worker died: retry now
    _, record = coordinator._take_attempt("t", tid)
    assert record.status == "FAILURE" and record.error == "WorkerLost"
    assert "2 attempts" in record.error_data


def test_an_unreachable_worker_keeps_its_lease_and_an_unclaimed_attempt_is_given_back(coordinator):
    c = coordinator
    running, waiting = submitted(c), submitted(c)
    for tid in (running, waiting):
        assert c._take_attempt("t", tid)[0] == 1
    start(c, running)
    # The call broke but the worker may still be running: no second attempt until its lease lapses.
    assert not c._after_lost_call("t", running, 1, dead=False)
    assert c._take_attempt("t", running)[0] is None and c.tasks.get("t", running).lease_owner == "w"
    # Never claimed: it does not count, and the next dispatch takes a new number, so the
    # broken call's request, should it still reach a replica, cannot claim the task.
    assert not c._after_lost_call("t", waiting, 1, dead=False)
    record = c.tasks.get("t", waiting)
    assert (record.attempts, record.runs, record.status, record.lease_owner) == (1, 0, "PENDING", None)
    assert c._take_attempt("t", waiting)[0] == 2
    late = TaskLease(c.tasks, TaskRef("t", waiting, 1), "late-replica")
    assert not late.claim()
    assert TaskLease(c.tasks, TaskRef("t", waiting, 2), "w2").claim()


def test_cancelled_task_with_lost_worker_is_revoked_not_retried(coordinator):
    tid = submitted(coordinator)
    coordinator._take_attempt("t", tid)
    start(coordinator, tid)
    coordinator.tasks.update("t", tid, lambda r: setattr(r, "cancel_requested", True))
    coordinator._after_lost_call("t", tid, 1, dead=True)
    attempt, record = coordinator._take_attempt("t", tid)
    assert attempt is None and record.status == "REVOKED"


def test_what_a_failed_call_says_about_its_worker():
    assert classify_failure(ray_errors.ActorDiedError()) == "dead"
    assert classify_failure(ray_errors.NodeDiedError("n")) == "dead"
    assert classify_failure(ray_errors.RayTaskError("run_task", "tb", ray_errors.ActorDiedError())) == "dead"
    assert classify_failure(ray_errors.ActorUnavailableError("unreachable", None)) == "unknown"
    assert classify_failure(ConnectionResetError()) == "unknown"
    assert classify_failure(ray_errors.RayTaskError("run_task", "tb", ValueError("a bug in the worker"))) == "error"
    assert classify_failure(ray_errors.RayTaskError("run", "tb", InvalidJobError("seed", "too big"))) == "job"
    # Serve's throughput-optimized transport raises the family's own exception, unwrapped.
    assert classify_failure(InvalidJobError("seed", "too big")) == "job"
    assert classify_failure(BackPressureError(num_queued_requests=3, max_queued_requests=2)) == "overloaded"


def run_drive(c, tid):
    async def go():
        c._start("t", tid, "sd15-a10g")
        await asyncio.gather(*c.inflight.values())
    asyncio.run(go())


def test_an_exception_from_the_worker_fails_the_task_without_retry(coordinator):
    calls = []

    async def run_task(ref):
        calls.append(ref.attempt)
        raise ray_errors.RayTaskError("run_task", "Traceback ... secret internals", KeyError("10.0.0.7"))

    coordinator.handles["sd15-a10g"] = FakeHandle(run_task)
    tid = submitted(coordinator)
    run_drive(coordinator, tid)
    record = coordinator.tasks.get("t", tid)
    assert calls == [1] and record.status == "FAILURE" and record.attempts == 1
    assert record.error == "InternalError" and "incident" in record.error_data
    assert "10.0.0.7" not in record.error_data and "KeyError" not in record.error_data
    assert coordinator.tasks.queued() == []


def test_a_dead_worker_is_retried_at_once(coordinator):
    calls = []

    async def run_task(ref):
        calls.append(ref.attempt)
        if ref.attempt == 1:
            start(coordinator, ref.task_id)
            raise ray_errors.ActorDiedError()  # killed while running it
        coordinator.tasks.update("t", ref.task_id, lambda r: r.move("SUCCESS"))
        return "SUCCESS"

    coordinator.handles["sd15-a10g"] = FakeHandle(run_task)
    tid = submitted(coordinator)
    run_drive(coordinator, tid)
    assert calls == [1, 2] and coordinator.tasks.get("t", tid).status == "SUCCESS"


def test_a_task_past_its_deadline_fails_queued_or_running(coordinator):
    c = coordinator
    late = submitted(c, deadline_at=time.time() - 1)
    hung = submitted(c, deadline_at=time.time() + 3)
    started = asyncio.Event()

    async def run_task(ref):  # a job that hangs: it never returns on its own
        c.tasks.update("t", ref.task_id, lambda r: (r.hold_lease("w", 20), r.move("STARTED")))
        started.set()
        await asyncio.Event().wait()

    c.handles["sd15-a10g"] = FakeHandle(run_task)

    async def go():
        await c.tick()
        await asyncio.wait_for(started.wait(), 5)
        drive = c.inflight[hung]
        deadline = time.monotonic() + 10
        while c.tasks.get("t", hung).status != "FAILURE" and time.monotonic() < deadline:
            await c.tick()
            await asyncio.sleep(0.05)
        await asyncio.wait([drive], timeout=5)
        assert drive.cancelled()  # the coordinator stopped waiting for the hung worker
    asyncio.run(go())
    for tid in (late, hung):
        record = c.tasks.get("t", tid)
        assert record.status == "FAILURE" and record.error == "Timeout", record
        assert "deadline" in record.error_data
    assert c.tasks.get("t", late).attempts == 0  # never dispatched
    assert c.tasks.queued() == []


class _Hooks(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, time.monotonic(), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receivers():
    """A good receiver, and one that accepts connections and never answers."""
    good = ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    _Hooks.received = []
    threading.Thread(target=good.serve_forever, daemon=True).start()
    with silent_server() as silent:
        yield f"http://127.0.0.1:{good.server_port}", silent.url
    good.shutdown()


def test_a_silent_webhook_receiver_stalls_neither_dispatch_nor_other_tenants(coordinator, receivers, monkeypatch):
    good, silent = receivers
    c = coordinator
    secrets = {"slow": new_secret(), "fast": new_secret()}
    monkeypatch.setattr(c.settings, "webhook_secrets", secrets)
    outbox = []
    for tenant, url, n in (("slow", silent, 8), ("fast", good, 2)):
        for _ in range(n):
            tid = submitted(c, tenant=tenant, webhook=True)
            done = c.tasks.update(tenant, tid, lambda r: r.move("SUCCESS"))
            c.store.put(outbox_key(tid, tenant), json.dumps(
                {"tenant": tenant, "task_id": tid, "url": url, "attempts": 0, "next_at": 0}).encode())
            outbox.append((tenant, done))

    async def go():
        began = time.monotonic()
        started = await c.webhook_scan()
        assert started == c.settings.webhook_tenant_concurrency + 2  # the slow tenant is capped
        per_tenant = sorted(c._webhook_tenant.values())
        assert per_tenant.count("slow") == c.settings.webhook_tenant_concurrency
        while len(_Hooks.received) < 2 and time.monotonic() - began < 5:
            await asyncio.sleep(0.05)
        assert len(_Hooks.received) == 2, "the other tenant's webhooks were held up"
        assert max(t for _, t, _ in _Hooks.received) - began < 3
        tick_began = time.monotonic()
        await c.tick()  # the dispatch scan does not wait for any delivery
        assert time.monotonic() - tick_began < 1
        for task in list(c._webhooks.values()):
            task.cancel()
        await asyncio.gather(*c._webhooks.values(), return_exceptions=True)
    asyncio.run(go())


def test_dead_letters_keep_only_a_fingerprint_of_the_url(coordinator, monkeypatch):
    c = coordinator
    monkeypatch.setattr(c.settings, "webhook_secrets", {"t": new_secret()})
    monkeypatch.setattr(c.settings, "webhook_max_attempts", 1)
    tid = submitted(c, webhook=True)
    c.tasks.update("t", tid, lambda r: r.move("SUCCESS"))
    url = "http://127.0.0.1:1/hooks/secret-token-in-path"
    c.store.put(outbox_key(tid, "t"), json.dumps({"tenant": "t", "task_id": tid, "url": url, "attempts": 0}).encode())

    async def go():
        await c.webhook_scan()
        await asyncio.gather(*c._webhooks.values())
    asyncio.run(go())
    dead = c.store.get(f"tenants/t/webhooks/dead/{tid}.json").decode()
    assert "secret-token-in-path" not in dead and "redacted:sha256:" in dead


def test_retention_sweep_deletes_old_objects_and_only_finished_records(coordinator):
    c = coordinator
    store = c.store
    store.put("tenants/t/images/old/0.png", b"x", "image/png")
    store.put("tenants/t/images/new/0.png", b"x", "image/png")
    finished, running = submitted(c), submitted(c)
    c.tasks.update("t", finished, lambda r: r.move("SUCCESS"))
    c.tasks.update("t", running, lambda r: (r.hold_lease("w", 20), r.move("STARTED")))
    old = time.time() - 7200
    for key in ("tenants/t/images/old/0.png", record_key("t", finished), record_key("t", running)):
        os.utime(store.root / "data" / key, (old, old))
    orphan = store.root / "locks" / "0123456789abcdef"  # left by a key that was never deleted
    orphan.write_bytes(b"")
    os.utime(orphan, (old, old))
    finished_lock = store.root / "locks" / hashlib.sha256(record_key("t", finished).encode()).hexdigest()[:32]
    assert finished_lock.exists()
    c.sweep_expired()
    assert not store.exists("tenants/t/images/old/0.png") and store.exists("tenants/t/images/new/0.png")
    assert c.tasks.get("t", finished) is None
    # An unfinished record that old is not deleted under its worker: failed through its CAS
    # first (settled: no marker left), and deleted once that write is past the retention too.
    survivor = c.tasks.get("t", running)
    assert survivor.status == "FAILURE" and survivor.error == "Timeout"
    assert running not in [q[0] for _, q in c.tasks.queued()]
    assert not finished_lock.exists()  # a deleted record's lock goes with it
    assert not orphan.exists()  # stale, unheld lock files are pruned


def test_timing_out_removes_settled_and_orphan_markers_but_not_a_young_one(coordinator):
    c = coordinator
    settled = submitted(c, deadline_at=time.time() - 5)
    c.tasks.update("t", settled, lambda r: r.move("SUCCESS"))  # finished, but its writer died before settling
    orphan_old, orphan_young = new_task_id(), new_task_id()
    for tid in (orphan_old, orphan_young):  # a submit that died after its marker, before its record
        c.store.put(f"queue/{tid}.t.sd15-a10g.{int(time.time()) - 5}", b"")
    os.utime(c.store.root / f"data/queue/{orphan_old}.t.sd15-a10g.{int(time.time()) - 5}",
             (time.time() - 300, time.time() - 300))

    async def go():
        await c.tick()
        await asyncio.gather(*c._background)
    asyncio.run(go())
    left = [q[0] for _, q in c.tasks.queued()]
    assert settled not in left and orphan_old not in left
    assert orphan_young in left  # its submit may still be writing the record


def test_time_out_rechecks_the_deadline_in_the_record(coordinator):
    tid = submitted(coordinator, deadline_at=time.time() + 60)
    record, changed = coordinator.time_out("t", tid)
    assert not changed and record.status == "PENDING"  # a marker rounded up never fails a task early
    record, changed = coordinator.time_out("t", tid, force=True)
    assert changed and record.error == "Timeout"


def test_a_late_settle_never_queues_a_webhook_twice(coordinator):
    c = coordinator
    tid = submitted(c, webhook=True)
    done = c.tasks.update("t", tid, lambda r: r.move("SUCCESS"))
    c.tasks.settle(done)
    assert c.store.exists(outbox_key(tid, "t"))
    c.store.delete(outbox_key(tid, "t"))  # delivered
    c.tasks.settle(done)  # a coordinator that listed the marker before it went settles it again
    assert not c.store.exists(outbox_key(tid, "t"))


def test_dispatch_takes_what_the_replicas_hold_and_picks_fairly_across_tenants(coordinator, monkeypatch):
    """One replica taking one job at a time: the coordinator keeps the rest in the store,
    publishes the backlog for the autoscaler, and serves a late tenant's task second,
    not after the first tenant's whole burst; a task of higher priority goes first
    among its tenant's own."""
    c = coordinator
    c.deployments = {"sd15-a10g": {"family": "sd15", "gpu": "a10g", "max_ongoing_requests": 1}}
    c._replicas, c._replicas_at = {"sd15-a10g": 1}, float("inf")  # as Serve's status said
    published = []
    monkeypatch.setattr("ingress.tasks.coordinator.publish_queue_depth", lambda depths: published.append(depths))
    order = []

    async def run_task(ref):
        record = c.tasks.get(ref.tenant, ref.task_id)
        order.append((ref.tenant, record.priority))
        c.tasks.update(ref.tenant, ref.task_id, lambda r: r.move("SUCCESS"))
        c.tasks.settle(c.tasks.get(ref.tenant, ref.task_id))
        return "SUCCESS"

    c.handles["sd15-a10g"] = FakeHandle(run_task)
    for _ in range(4):
        submitted(c, tenant="a")
    submitted(c, tenant="a", priority=9)
    submitted(c, tenant="b")

    async def go():
        await c.tick()
        assert len(c.inflight) == 1 and published[-1] == {"sd15-a10g": 5}
        for _ in range(12):
            await asyncio.gather(*c.inflight.values())
            await c.tick()
        assert not c.inflight and published[-1] == {"sd15-a10g": 0}

    asyncio.run(go())
    assert order == [("a", 9), ("b", 5), ("a", 5), ("a", 5), ("a", 5), ("a", 5)]


def test_a_deployment_scaled_to_zero_gets_one_attempt_so_serve_sees_demand(coordinator, monkeypatch):
    c = coordinator
    c.deployments = {"sd15-a10g": {"family": "sd15", "gpu": "a10g", "max_ongoing_requests": 2}}
    c._replicas, c._replicas_at = {"sd15-a10g": 0}, float("inf")
    assert c._room("sd15-a10g") == 2  # one replica's worth while it starts
    c._replicas = {"sd15-a10g": 3}
    assert c._room("sd15-a10g") == 6
    c._full_until["sd15-a10g"] = time.time() + 5
    assert c._room("sd15-a10g") == 0  # it just said "full"


def test_admission_counts_against_the_tenant_quota(coordinator, monkeypatch):
    monkeypatch.setenv("STUDIO_TENANT_QUOTAS", json.dumps({"t": {"max_tasks": 1, "images_per_minute": 4}}))
    from ingress.wiring.settings import IngressSettings

    coordinator.settings = IngressSettings()

    async def go():
        first = await coordinator.admit("t", {"images": 2}, True)
        second = await coordinator.admit("t", {"images": 1}, True)
        third = await coordinator.admit("t", {"images": 3}, False)
        return first, second, third

    first, second, third = asyncio.run(go())
    assert first is None and second.quota == "max_tasks" and third.quota == "images_per_minute"
