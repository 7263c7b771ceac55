"""Serve autoscaling that also sees the async queue.

Queued async tasks wait in the object store, not in Serve: the coordinator
dispatches at most what a family deployment's running replicas can take, so
Serve's own count of ongoing requests misses the backlog. The coordinator
publishes, once per scan, how many tasks wait for each family deployment
(:func:`publish_queue_depth`, in Ray's GCS key-value store, no credentials or
object-store IO in the controller) and :class:`QueueDepthPolicy`, a class-based
Serve autoscaling policy, adds that backlog to Serve's ongoing requests.

Serve wraps the policy with the deployment's ``autoscaling_config`` (min/max
replicas, upscale/downscale delays, scaling factors), as for its default policy.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

log = logging.getLogger(__name__)

KV_NAMESPACE = "studio"
KV_KEY = "queue_depth"
POLICY_PATH = "deployments.autoscaling:QueueDepthPolicy"


def encode_depths(depths: dict[str, int], now: float | None = None) -> bytes:
    """The published record: ``{"at": unix time, "queued": {deployment: tasks}}``."""
    return json.dumps({"at": time.time() if now is None else now, "queued": depths}, sort_keys=True).encode()


def decode_depths(raw: bytes | None, now: float, stale_after_s: float) -> dict[str, int]:
    """The queued counts of a published record; nothing when absent, malformed or stale
    (a coordinator that stopped publishing must not keep replicas up)."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
        if now - float(data["at"]) > stale_after_s:
            return {}
        return {str(k): max(0, int(v)) for k, v in data["queued"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def publish_queue_depth(depths: dict[str, int]) -> None:
    """Write the backlog per deployment (blocking GCS call: run it off the event loop)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(KV_KEY, encode_depths(depths), overwrite=True, namespace=KV_NAMESPACE)


def _read_published() -> bytes | None:
    from ray.experimental import internal_kv

    return internal_kv._internal_kv_get(KV_KEY, namespace=KV_NAMESPACE)


def desired_replicas(ongoing: float, queued: int, running: int, target_ongoing: float) -> float:
    """Replicas for ``ongoing`` Serve requests plus ``queued`` tasks at ``target_ongoing``
    each; from zero replicas, one as soon as there is any work."""
    workload = ongoing + queued
    if running == 0:
        return 1.0 if workload > 0 else 0.0
    return workload / target_ongoing


class QueueDepthPolicy:
    """Serve's queue-length policy, plus the async backlog the coordinator publishes.

    ``poll_interval_s`` bounds the reads of the published record (the controller
    calls a policy every control-loop tick); ``stale_after_s`` drops a record the
    coordinator stopped refreshing.
    """

    def __init__(self, poll_interval_s: float = 1.0, stale_after_s: float = 30.0, reader: Any = None):
        self.poll_interval_s = poll_interval_s
        self.stale_after_s = stale_after_s
        self._read = reader or _read_published
        self._raw: bytes | None = None
        self._read_at = -math.inf

    def queued(self, deployment: str) -> int:
        now = time.monotonic()
        if now - self._read_at >= self.poll_interval_s:
            self._read_at = now
            try:
                self._raw = self._read()
            except Exception:  # the GCS is briefly away: no backlog rather than no decision
                log.debug("queue depth unavailable", exc_info=True)
                self._raw = None
        return decode_depths(self._raw, time.time(), self.stale_after_s).get(deployment, 0)

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        queued = self.queued(ctx.deployment_name)
        desired = desired_replicas(
            ctx.total_num_requests, queued, ctx.current_num_replicas, ctx.config.get_target_ongoing_requests()
        )
        return desired, {"queued_tasks": queued}
