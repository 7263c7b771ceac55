"""The service config the load test runs: serve_config.yaml's application (pools,
runtime_env, logging, ingress) with two tiny families on autoscaled deployments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bench.load.profiles import MAX_REPLICAS, MIN_REPLICAS, RETRY_AFTER, SYNC_APP, SYNC_TIMEOUT, ZERO_APP

ROOT = Path(__file__).resolve().parents[2]

#: Environment of the launcher (and so of Ray and every replica).
SERVICE_ENV = {
    "STUDIO_SYNC_TIMEOUT_SECONDS": str(SYNC_TIMEOUT),
    "STUDIO_RETRY_AFTER_SECONDS": str(RETRY_AFTER),
    # A killed worker's task is re-queued after this lease expires (default 20 s).
    "STUDIO_TASK_LEASE_SECONDS": "6",
    "STUDIO_TASK_MAX_ATTEMPTS": "3",
    # Serve pushes autoscaling metrics every 10 s by default; 1 s lets a short run show scaling.
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
}


def autoscaling(deployment: str) -> dict[str, Any]:
    """Serve's ``autoscaling_config`` of a family deployment of the load config."""
    return {
        "min_replicas": MIN_REPLICAS[deployment],
        "max_replicas": MAX_REPLICAS,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 2,
        "downscale_delay_s": 10,
        # Averaged over this window; above Serve's metrics_interval_s (10 s), which it must exceed.
        "look_back_period_s": 11,
    }


def family(model: str, deployment: str) -> dict[str, Any]:
    return {
        "kind": "diffusion",
        "model": {"path": model},
        "deployment": {
            "autoscaling_config": autoscaling(deployment),
            # Small per-replica limits so that two cores can be overloaded (503 + Retry-After).
            "max_ongoing_requests": 1,
            "max_queued_requests": 2,
            "health_check_period_s": 5,
            "graceful_shutdown_timeout_s": 5,
        },
    }


def load_app_args(base: dict[str, Any]) -> dict[str, Any]:
    """The builder's ``args``: ``base``'s pools and ingress, two families, one app each."""
    small = {"defaults": {"height": 256, "width": 256, "num_inference_steps": 1}}
    return {
        "models_dir": base["models_dir"],
        "gpu_pools": base["gpu_pools"],
        "ingress": base.get("ingress", {}),
        "families": {"sd15": family("tiny-sd15", "sd15-a10g"), "sdxl": family("tiny-sdxl", "sdxl-a100")},
        "apps": [
            {"app_id": SYNC_APP, "name": "Load test: SD 1.5 on a10g (min 1 replica)", "family": "sd15",
             "task": "text2img", "inference_types": ["a10g"], **small},
            {"app_id": ZERO_APP, "name": "Load test: SDXL on a100 (scales from zero)", "family": "sdxl",
             "task": "text2img", "inference_types": ["a100"], **small},
        ],
    }


def write_load_config(directory: Path, source: Path = ROOT / "serve_config.yaml") -> Path:
    """Write ``serve_config.load.yaml`` into ``directory``; return its path."""
    config = yaml.safe_load(source.read_text())
    (app,) = [a for a in config["applications"] if a["name"] == "studio"]
    app["args"] = load_app_args(app["args"])
    config["applications"] = [app]
    path = directory / "serve_config.load.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
