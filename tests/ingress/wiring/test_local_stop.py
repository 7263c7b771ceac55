"""Ctrl-C stops the launcher within 10 s and leaves no process of its session; a second
Ctrl-C kills at once. Each case starts its own one-family service (tiny models)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.service import ROOT, LocalService, session_members

pytestmark = pytest.mark.e2e

KEY = "sk-stop-test"


def one_family_config(tmp: Path) -> Path:
    """serve_config.yaml cut down to SD 1.5 text to image on one GPU type."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    args = config["applications"][0]["args"]
    family = {k: v for k, v in args["families"]["sd15"].items() if k != "components"}
    args["families"] = {"sd15": family}
    args["apps"] = [{"app_id": "ap-stop", "name": "stop test", "family": "sd15", "task": "text2img",
                     "inference_types": ["a10g"]}]
    args.pop("chat", None)
    args.pop("documents", None)
    path = tmp / "serve_config.stop.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _empty_within(sid: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := session_members(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.parametrize("interrupts", [1, 2])
def test_ctrl_c_stops_within_10_seconds_and_leaves_nothing(tmp_path, interrupts):
    svc = LocalService(tmp_path, one_family_config(tmp_path), keys={KEY: "tenant-a"}).start()
    try:
        assert svc.proc is not None
        sid = svc.proc.pid
        assert len(session_members(sid)) > 3  # the launcher, Ray's processes, the replicas
        r = httpx.get(f"{svc.api}/get-status", timeout=30)
        assert r.status_code == 200 and r.json()["deployments"]["sd15-a10g"]["replicas"] == 1
        t0 = time.monotonic()
        os.kill(sid, signal.SIGINT)  # the launcher alone: what `kill -INT` sends (a terminal signals its group)
        if interrupts == 2:
            time.sleep(0.3)
            os.kill(sid, signal.SIGINT)
        try:
            code = svc.proc.wait(10 if interrupts == 1 else 3)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the launcher still runs {time.monotonic() - t0:.1f} s after {interrupts} SIGINT")
        stopped = time.monotonic() - t0
        left = _empty_within(sid, max(0.5, 10 - stopped))
        print(f"{interrupts} SIGINT: launcher exited in {stopped:.1f} s, session empty in {time.monotonic() - t0:.1f} s")
        assert left == [], f"left behind: {left}"
        assert code == (0 if interrupts == 1 else 130)
        last = "STOPPED" if interrupts == 1 else "KILLED"
        deadline = time.monotonic() + 2  # the reader thread may not have the last line yet
        while last not in svc.log and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last in svc.log
    finally:
        svc.stop()
