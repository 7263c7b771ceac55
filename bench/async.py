"""Async-task benchmark: submit latency and status reads, on both object stores.

For each store — the embedded default (local files) and S3 (a SeaweedFS server
this benchmark starts on 127.0.0.1) — it starts the real service
(``python -m ingress.wiring.local up``, tiny models) and measures, through the Serve
proxy and the ingress, with the same keep-alive HTTP/1.1 load generator as
``bench/overhead.py``:

* baseline  — ``GET apps`` (auth + a registry read; no store IO);
* submit-run    — ``POST getTextToImage`` with ``celery: true`` (validation,
                  the request, queue-marker and record writes, the coordinator
                  kick) while the submitted jobs (256x256, 1 step) run on the
                  same two cores;
* submit-paused — the same with the family replicas paused (SIGSTOP of the
                  processes this run started): the submit path's own cost, as on
                  a cluster whose GPU workers are other machines;
* status        — ``GET status/{task_id}`` of a finished task (its envelope,
                  URLs included, is reused while the URLs keep half their life);
* status-pending — ``GET status/{task_id}`` of one queued task, hammered (the
                  ingress's status view answers it from memory; one store read
                  per task per freshness window, ``STUDIO_TASK_RENEW_SECONDS``);
* status-<K>tasks — ``GET status/{task_id}`` of K distinct queued tasks, polled
                  round-robin over the same connections: each task is polled
                  every ``K / req/s`` seconds, so whether the view answers from
                  memory depends on K (``--tasks``); the report prints that
                  interval next to the ratio.

Targets: submit p99 <= 25 ms on the embedded default and <= 50 ms on S3;
status reads >= 0.9x the req/s of ``GET apps`` (printed as ratios of the same run:
the queued-task reads against ``apps-paused``, ``GET apps`` measured again just
before them with the family replicas paused, so that both see the same machine).

    .venv/bin/python -m bench.async --requests 300 --concurrency 1 8 --tasks 64 512 [--skip submit-run]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.overhead import Conn, drive, log, raw_load  # noqa: E402
from storage.factory import open_store  # noqa: E402
from storage.settings import StorageSettings  # noqa: E402
from storage.tasks import parse_queue_key  # noqa: E402
from tests.support.configs import e2e_config  # noqa: E402
from tests.support.seaweed import SeaweedS3  # noqa: E402
from tests.support.service import LocalService, replica_pids  # noqa: E402

KEY = "sk-bench-async"
JOB = {"app_id": "ap-sd15-txt2img", "height": 256, "width": 256, "num_inference_steps": 1, "celery": True}


def raw_request(port: int, method: str, path: str, body: dict | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return (head + "\r\n").encode() + data


async def load(port: int, request: bytes, requests: int, concurrency: int) -> dict[str, Any]:
    return await raw_load(port, request, requests, concurrency, warmup=max(20, concurrency))


async def rotating_load(port: int, requests_: list[bytes], requests: int, concurrency: int) -> dict[str, Any]:
    """Like :func:`load`, but each call sends the next of ``requests_`` (round-robin over
    all connections): many distinct resources polled at once, not one hammered."""
    conns = [Conn("127.0.0.1", port, requests_[0]) for _ in range(concurrency)]
    free: asyncio.Queue[Conn] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)
    order = itertools.cycle(requests_)

    async def call() -> bool:
        conn = await free.get()
        try:
            conn.request = next(order)
            return await conn.call()
        finally:
            free.put_nowait(conn)

    try:
        return await drive(call, requests, concurrency, warmup=max(20, concurrency))
    finally:
        for conn in conns:
            conn.close()


def finished_task(svc: LocalService) -> str:
    headers = {"Authorization": f"Bearer {KEY}"}
    task_id = httpx.post(f"{svc.api}/getTextToImage", json=JOB, headers=headers).json()["task_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if httpx.get(f"{svc.api}/status/{task_id}", headers=headers).json()["status"] == "SUCCESS":
            return task_id
        time.sleep(0.2)
    raise RuntimeError("the probe task did not finish")


def wait_idle(store, timeout: float = 300) -> None:
    """Let the submitted background jobs drain so they do not skew the next scenario."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and store.list("queue/"):
        time.sleep(0.5)


def measure(name: str, env: dict[str, str], storage: StorageSettings | None, opts) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-async-{name}-"))
    svc = LocalService(tmp, e2e_config(tmp), keys={KEY: "bench"}, env=env).start()
    store = open_store(storage or StorageSettings(backend="local", local_root=tmp / "data" / "objects"))
    results: dict[str, Any] = {}
    try:
        task_id = finished_task(svc)
        path = "/api/v1/studio"
        submit = raw_request(svc.port, "POST", f"{path}/getTextToImage", JOB)
        plan = [
            ("apps", raw_request(svc.port, "GET", f"{path}/apps")),
            ("status", raw_request(svc.port, "GET", f"{path}/status/{task_id}")),
            ("submit-run", submit),
        ]
        plan = [(scenario, request) for scenario, request in plan if scenario not in opts.skip]
        for scenario, request in plan:
            for c in opts.concurrency:
                log(f"[{name}] {scenario} c={c} ...")
                results[f"{scenario}@{c}"] = asyncio.run(load(svc.port, request, opts.requests, c))
                if scenario == "submit-run":
                    wait_idle(store)
        # Workers paused (SIGSTOP of the family replicas this run started): the
        # submit path alone, as on a cluster whose GPU workers are other machines.
        workers = replica_pids(svc, "sd15-a10g")
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            for c in opts.concurrency:
                log(f"[{name}] submit-paused c={c} ...")
                results[f"submit-paused@{c}"] = asyncio.run(load(svc.port, submit, opts.requests, c))
            queued = [e[0] for o in sorted(store.list("queue/"), key=lambda o: o.key)
                      if (e := parse_queue_key(o.key)) is not None]
            status_pending = raw_request(svc.port, "GET", f"{path}/status/{queued[-1]}")
            for c in opts.concurrency:  # the baseline again, next to the reads it is compared with
                log(f"[{name}] apps-paused c={c} ...")
                results[f"apps-paused@{c}"] = asyncio.run(load(svc.port, plan[0][1], opts.requests, c))
            for c in opts.concurrency:
                log(f"[{name}] status-pending c={c} ...")
                results[f"status-pending@{c}"] = asyncio.run(load(svc.port, status_pending, opts.requests, c))
            for k in opts.tasks:
                polls = [raw_request(svc.port, "GET", f"{path}/status/{t}") for t in queued[-k:]]
                for c in opts.concurrency:
                    log(f"[{name}] status-{len(polls)}tasks c={c} ...")
                    r = asyncio.run(rotating_load(svc.port, polls, opts.requests, c))
                    r["tasks"] = len(polls)
                    results[f"status-{len(polls)}tasks@{c}"] = r
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
    finally:
        svc.stop()
    return results


def report(all_results: dict[str, dict[str, Any]], opts) -> None:
    print(f"\n{'store':8} {'scenario':16} {'c':>3} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for store, results in all_results.items():
        for key, r in results.items():
            scenario, c = key.split("@")
            print(f"{store:8} {scenario:16} {c:>3} {r['rps']:>9.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>6}")
    print("\nTargets:")
    limits = {"local": 25.0, "s3": 50.0}
    for store, results in all_results.items():
        for c in opts.concurrency:
            apps = max(results[f"apps@{c}"]["rps"], 1e-9)
            for scenario in ("submit-paused", "submit-run"):
                if f"{scenario}@{c}" not in results:
                    continue
                p99 = results[f"{scenario}@{c}"]["p99_ms"]
                verdict = "met" if p99 <= limits[store] else "MISSED"
                print(f"  {store:6} c={c}: {scenario:14} p99 {p99:7.1f} ms (target <= {limits[store]:.0f}: {verdict})")
            paused = max(results[f"apps-paused@{c}"]["rps"], 1e-9)
            status = [key.split("@")[0] for key in results if key.startswith("status") and key.endswith(f"@{c}")]
            for scenario in status:
                r = results[f"{scenario}@{c}"]
                ratio = r["rps"] / (apps if scenario == "status" else paused)  # vs the GET apps run of its phase
                verdict = "met" if ratio >= 0.9 else "MISSED"
                every = f"; each task polled every {r['tasks'] / max(r['rps'], 1e-9) * 1000:.0f} ms" if "tasks" in r else ""
                print(f"  {store:6} c={c}: {scenario:14} {ratio:5.2f}x the req/s of GET apps "
                      f"(target >= 0.9x: {verdict}{every})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.async", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--stores", nargs="+", default=["local", "s3"], choices=["local", "s3"])
    parser.add_argument("--tasks", type=int, nargs="+", default=[64, 512],
                        help="distinct queued tasks polled round-robin, one scenario each (capped by what is queued)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["submit-run"],
                        help="leave out scenarios (submit-run waits for every job it submits to run)")
    parser.add_argument("--out", type=Path)
    opts = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    if "local" in opts.stores:
        results["local"] = measure("local", {}, None, opts)
    if "s3" in opts.stores:
        with SeaweedS3() as s3:
            settings = s3.storage_settings()
            env = s3.service_env(settings)
            results["s3"] = measure("s3", env, settings.model_copy(update={"s3_create_bucket": False}), opts)
    report(results, opts)
    if opts.out:
        opts.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
