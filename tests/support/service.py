"""Start the real service (``python -m ingress.wiring.local up``) in a subprocess for tests
and benchmarks, and stop exactly the processes it started."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_models_dir() -> Path:
    """One directory of the tiny models for every service a test session starts (writing them takes
    ~12 s), keyed by the code that makes them, so a change to a maker writes a fresh set."""
    digest = hashlib.sha256()
    for path in sorted([ROOT / "deployments" / "tiny.py", *(ROOT / "deployments" / "pipelines").glob("tiny_*.py")]):
        digest.update(path.read_bytes())
    return Path(tempfile.gettempdir()) / f"studio-tiny-models-{os.getuid()}" / digest.hexdigest()[:16]


class LocalService:
    """A local Ray node + Serve app, launched as its own process group. Its tiny models come from
    :func:`tiny_models_dir` unless ``models_dir`` names others."""

    def __init__(self, workdir: Path, config: Path, *, keys: dict[str, str], env: dict[str, str] | None = None,
                 models_dir: Path | None = None):
        self.workdir = workdir
        self.models_dir = models_dir or tiny_models_dir()
        self.config = config
        self.keys = keys
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.base}/api/v1/studio"
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log: deque[str] = deque(maxlen=400)
        self.metrics_url: str | None = None  # the node's Prometheus endpoint (the launcher's METRICS line)

    def start(self, timeout: float = 420) -> LocalService:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")}
        env.update(
            {
                "STUDIO_API_KEYS": json.dumps(self.keys),
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        cmd = [
            sys.executable, "-m", "ingress.wiring.local", "up",
            "--config", str(self.config), "--port", str(self.port),
            "--models-dir", str(self.models_dir), "--data-dir", str(self.workdir / "data"),
        ]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        ready = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.log.append(line.rstrip())
                if line.startswith("METRICS "):  # printed before READY
                    self.metrics_url = line.split(None, 1)[1].strip()
                if line.startswith("READY "):
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(self.log)
                self.stop()
                raise RuntimeError(f"service did not come up:\n{tail}")
        return self

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM the launcher (it stops its Ray node in seconds), then SIGKILL whatever is
        left of the session it leads: Ray workers sit in process groups of their own
        but keep the launcher's session id, so nothing else is touched."""
        if self.proc is None:
            return
        sid = self.proc.pid
        try:
            os.killpg(sid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 15
        while session_members(sid) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in session_members(sid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None


def replica_pids(service: LocalService, deployment: str) -> list[int]:
    """PIDs of the Serve replicas of ``deployment`` that this service started
    (Ray titles them ``ray::ServeReplica:<app>:<deployment>[.<method>]``)."""
    assert service.proc is not None
    title = f"ray::ServeReplica:studio:{deployment}"
    found = []
    for pid in session_members(service.proc.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if cmdline.strip() == title or cmdline.startswith(title + "."):  # ".method" while it runs one
            found.append(pid)
    return found


def replica_log_lines(service: LocalService, deployment: str, text: str) -> list[str]:
    """Lines holding ``text`` in the Serve log files the replicas of ``deployment`` have open
    (each replica's own JSON log under Ray's session directory)."""
    lines = []
    for pid in replica_pids(service, deployment):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = Path(fd.readlink())
            except OSError:
                continue
            if target.suffix == ".log" and "/serve/" in str(target):
                lines += [line for line in target.read_text(errors="replace").splitlines() if text in line]
    return lines


def session_members(sid: int) -> list[int]:
    """PIDs whose session id is ``sid`` (Linux /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid:
            members.append(int(entry.name))
    return members
