"""Load test (and faults under load) of the studio API on the real service.

    .venv/bin/python -m bench.load [--short|--full] [--faults|--no-faults] [--out DIR] [--raw DIR]

Starts the service (``tests.support.service.LocalService``: its own session, tiny
models, a temporary workdir, loopback only) with the load config of
:mod:`bench.load.config`, then runs locust headless in a subprocess with the
profile's stages (warm-up, ramp, overload, cool-down). Meanwhile it samples the
replicas of every deployment once a second and, with faults on (the default of
``--full``), SIGKILLs a family replica, the ingress replica and the Serve proxy of
this service. After the load it waits (bounded) for every async task submitted to
end and downloads each output. Writes ``report.md``, ``replicas.png`` and
``figures.json`` into ``--out`` (default ``bench/load/results``); the raw CSVs go
to ``--raw`` (default: a temporary directory, removed). Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.load.config import SERVICE_ENV, write_load_config  # noqa: E402
from bench.load.faults import FaultInjector  # noqa: E402
from bench.load.monitor import ReplicaMonitor  # noqa: E402
from bench.load.plot import plot  # noqa: E402
from bench.load.profiles import DEPLOYMENTS, KEY, PROFILES, TENANT, Profile  # noqa: E402
from bench.load.report import (  # noqa: E402
    bare_5xx_outside,
    checks,
    fault_windows,
    per_stage,
    read_requests,
    replica_figures,
    request_figures,
    route_stats,
    stage_rows,
    write_markdown,
)
from tests.support.service import LocalService  # noqa: E402

TERMINAL = {"SUCCESS", "FAILURE", "REVOKED"}
PNG = b"\x89PNG\r\n\x1a\n"


def log(msg: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_locust(svc: LocalService, profile: Profile, raw: Path, on_start) -> tuple[int, float, float]:
    """Run locust until its shape ends (bounded); ``on_start(t)`` is called when the load begins.
    Returns (exit code, load start, load end) in unix time."""
    env = {**os.environ, "LOAD_PROFILE": profile.name, "LOAD_RAW_DIR": str(raw), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "bench/load/locustfile.py"), "--headless",
           "--host", svc.base, "--csv", str(raw / "locust"), "--csv-full-history", "--only-summary",
           "--loglevel", "WARNING", "--stop-timeout", "5"]
    with (raw / "locust.log").open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    stages = raw / "stages.jsonl"
    start = None
    deadline = time.monotonic() + 60
    try:
        while start is None and time.monotonic() < deadline and proc.poll() is None:
            if stages.exists() and stages.read_text().strip():
                start = json.loads(stages.read_text().splitlines()[0])["t"]
            else:
                time.sleep(0.2)
        if start is None:
            raise RuntimeError(f"locust did not start its load:\n{(raw / 'locust.log').read_text()[-3000:]}")
        log(f"load started ({profile.seconds:.0f} s, stages: {', '.join(s.name for s in profile.stages)})")
        on_start(start)
        try:
            code = proc.wait(timeout=profile.seconds + 60)
        except subprocess.TimeoutExpired:
            log("locust overran its profile: stopped")
            code = -1
        return code, start, time.time()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def png_at(client: httpx.Client, url: str) -> bool:
    """Whether ``url`` answers 200 with a non-empty PNG."""
    try:
        r = client.get(url)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and r.content.startswith(PNG) and len(r.content) > len(PNG)


def settle(svc: LocalService, raw: Path, limit: float) -> dict[str, Any]:
    """Wait (at most ``limit`` s) for every async task submitted to end; download every output."""
    submitted = [json.loads(line) for line in (raw / "tasks.jsonl").read_text().splitlines() if line.strip()] \
        if (raw / "tasks.jsonl").exists() else []
    ids = [t["task_id"] for t in submitted]
    final: dict[str, dict[str, Any]] = {}
    began = time.monotonic()
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=httpx.Timeout(10.0)) as client:
        while len(final) < len(ids) and time.monotonic() - began < limit:
            for task_id in ids:
                if task_id in final:
                    continue
                try:
                    r = client.get(f"{svc.api}/status/{task_id}")
                except httpx.HTTPError:
                    continue
                if r.status_code == 200 and r.json().get("status") in TERMINAL:
                    final[task_id] = r.json()
            if len(final) < len(ids):
                time.sleep(1)
        settled = time.monotonic() - began
        ok = bad = 0
        bad_urls = []
        for env in final.values():
            if env["status"] != "SUCCESS":
                continue
            for url in env.get("output") or [None]:
                good = bool(url) and png_at(client, url)
                ok += good
                bad += not good
                if not good:
                    bad_urls.append(url)
    by_status: dict[str, int] = {}
    errors: dict[str, int] = {}
    unexplained = 0
    for env in final.values():
        by_status[env["status"]] = by_status.get(env["status"], 0) + 1
        if env["status"] == "FAILURE":
            errors[env.get("error") or "?"] = errors.get(env.get("error") or "?", 0) + 1
            unexplained += not (env.get("error") and env.get("error_data"))
    return {"submitted": len(ids), "terminal": len(final), "by_status": by_status, "errors": errors,
            "open": [t for t in ids if t not in final], "outputs_ok": ok, "outputs_bad": bad, "bad_urls": bad_urls[:10],
            "failures_without_reason": unexplained,
            "settle_s": round(settled, 1), "settle_limit_s": limit}


def run(profile: Profile, faults: bool, out: Path, raw: Path | None = None) -> dict[str, Any]:
    """One load run; returns the figures (also written to ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="studio-load-") as tmp:
        work = Path(tmp)
        raw_dir = raw or work / "raw"
        raw_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("requests.csv", "tasks.jsonl", "stages.jsonl"):
            (raw_dir / stale).unlink(missing_ok=True)
        svc = LocalService(work, write_load_config(work), keys={KEY: TENANT}, env=SERVICE_ENV)
        load_before = os.getloadavg()[0]
        log("starting the service (tiny models, loopback)")
        t0 = time.monotonic()
        svc.start()
        log(f"service up in {time.monotonic() - t0:.0f} s at {svc.base}")
        stop = threading.Event()
        assert svc.proc is not None
        sid = svc.proc.pid
        monitor = ReplicaMonitor(svc.api, KEY, sid, list(DEPLOYMENTS), stop)
        monitor.start()
        injector: FaultInjector | None = None

        def probe() -> bool:
            try:
                # The ingress answering an authenticated call (get-status would also wait for every family
                # deployment, and a family replica killed just before may still be starting).
                return httpx.get(f"{svc.api}/apps", headers={"Authorization": f"Bearer {KEY}"}, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        def on_start(start: float) -> None:
            nonlocal injector
            if faults:
                schedule = [(f.at, f.target) for f in profile.faults]
                injector = FaultInjector(sid, schedule, "sd15-a10g", start, probe, stop, log)
                injector.start()

        try:
            code, start, end = run_locust(svc, profile, raw_dir, on_start)
            load_end = os.getloadavg()[0]
            if injector is not None and injector.is_alive():
                log("load finished; waiting for the service to come back from the last fault")
                injector.join(injector.last_wait + 5)
            log(f"load finished (locust exit {code}); settling async tasks")
            tasks = settle(svc, raw_dir, profile.settle_s)
            log(f"async tasks: {tasks['terminal']}/{tasks['submitted']} terminal in {tasks['settle_s']:.0f} s")
            time.sleep(2)
        finally:
            stop.set()
            monitor.join(5)
            if injector is not None:
                injector.join(5)
            log("stopping the service")
            svc.stop(timeout=15)
        rows = read_requests(raw_dir / "requests.csv")
        fault_list = injector.as_dicts() if injector is not None else []
        fig: dict[str, Any] = {
            "profile": profile.name,
            "faults_enabled": faults,
            "started_utc": datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(),
            # The 1-minute load average of the machine before the service started and at the end of the load.
            "loadavg": [round(load_before, 1), round(load_end, 1)],
            "load_seconds": round(end - start, 1),
            "locust_exit": code,
            "stages": stage_rows(profile),
            "routes": route_stats(raw_dir / "locust_stats.csv"),
            "requests": request_figures(rows),
            "faults": fault_windows(rows, fault_list, end),
            "async": tasks,
            "replicas": replica_figures(monitor, start, end),
            "replica_samples": [{"t": round(s["t"] - start, 2), "api": s["api"], "procs": s["procs"]} for s in monitor.samples],
        }
        fig["per_stage"] = per_stage(rows, start, fig["stages"])
        fig["bare_5xx_outside_faults"] = bare_5xx_outside(rows, fig["faults"])
        fig["checks"] = checks(fig)
        plot(out / "replicas.png", monitor=monitor, rows=rows, history_csv=raw_dir / "locust_stats_history.csv",
             start=start, stages=fig["stages"], faults=fig["faults"],
             title=f"studio API load test, profile {profile.name}{' with faults' if faults else ''} "
                   f"({fig['started_utc']}, {fig['cpus']} CPUs)")
        write_markdown(fig, out / "report.md")
        (out / "figures.json").write_text(json.dumps(fig, separators=(",", ":")))
        if raw is None:
            shutil.rmtree(raw_dir, ignore_errors=True)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--short", dest="profile", action="store_const", const="short", help="≈1.5 min of load (default)")
    size.add_argument("--full", dest="profile", action="store_const", const="full", help="≈8 min of load, faults on")
    parser.add_argument("--faults", action=argparse.BooleanOptionalAction, default=None,
                        help="kill a family replica, the ingress and the proxy under load (default: on with --full)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/load/results", help="report.md, replicas.png, figures.json")
    parser.add_argument("--raw", type=Path, default=None, help="keep the raw CSVs here (default: not kept)")
    opts = parser.parse_args(argv)
    profile = PROFILES[opts.profile or "short"]
    faults = opts.faults if opts.faults is not None else profile.name == "full"
    fig = run(profile, faults, opts.out.resolve(), opts.raw.resolve() if opts.raw else None)
    print((opts.out / "report.md").read_text())
    failed = [name for name, ok in fig["checks"].items() if not ok]
    for name in failed:
        log(f"CHECK FAILED: {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
