"""Replicas per deployment over time: ``GET get-status`` once a second, and always a count
of this service's replica processes (the fallback while that route is absent or unreachable)."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from bench.load.faults import TITLES, count_titled, family_title


class ReplicaMonitor(threading.Thread):
    """Samples ``{t, api, procs}`` every ``period`` seconds until ``stop`` is set."""

    def __init__(self, api: str, key: str, sid: int, deployments: list[str], stop: threading.Event, period: float = 1.0):
        super().__init__(daemon=True, name="replica-monitor")
        self.url, self.headers = f"{api}/get-status", {"Authorization": f"Bearer {key}"}
        self.sid, self.stop_event, self.period = sid, stop, period
        self.titles = {d: family_title(d) for d in deployments} | TITLES
        self.samples: list[dict[str, Any]] = []
        self.api_seen = False

    def run(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(2.0), headers=self.headers) as client:
            while True:
                started = time.time()
                self.samples.append({"t": started, "api": self._api(client), "procs": count_titled(self.sid, self.titles)})
                if self.stop_event.wait(max(0.0, self.period - (time.time() - started))):
                    return

    def _api(self, client: httpx.Client) -> dict[str, dict[str, Any]] | None:
        """``deployments`` of get-status, or None (route absent, service unreachable, other shape)."""
        try:
            r = client.get(self.url)
            body = r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        deployments = body.get("deployments") if isinstance(body, dict) else None
        if not isinstance(deployments, dict):
            return None
        self.api_seen = True
        return {name: {k: d.get(k) for k in ("replicas", "target", "status")}
                for name, d in deployments.items() if isinstance(d, dict)}

    def api_series(self, deployment: str) -> tuple[list[float], list[float | None], list[float | None]]:
        """(times, running replicas, target) from get-status; None where it did not answer."""
        ts, running, targets = [], [], []
        for s in self.samples:
            api = (s["api"] or {}).get(deployment) or {}
            ts.append(s["t"])
            running.append(api.get("replicas") if isinstance(api.get("replicas"), int) else None)
            targets.append(api.get("target") if isinstance(api.get("target"), int) else None)
        return ts, running, targets

    def process_series(self, name: str) -> tuple[list[float], list[int]]:
        """(times, live processes titled as ``name``'s replicas) — starting, running or stopping."""
        return [s["t"] for s in self.samples], [s["procs"].get(name, 0) for s in self.samples]
