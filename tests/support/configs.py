"""The serve_config.yaml variant the end-to-end tests and ``bench/async.py`` run."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from tests.support.service import ROOT

DEADLINE_APP, DEADLINE_SECONDS = "ap-sd15-deadline", 4
LORA_APP = "ap-sd15-lora-multiplex"
SCALE_APP = "ap-sd15-autoscaled"


#: The faces, backgrounds, upscaling (issue 9) and speech (issue 10) apps and what only they need.
STUDIO_TASKS = ("face", "avatar", "replace_background", "remove_background", "upscale", "sd_upscale", "tts",
                "tts_elevenlabs")


def e2e_config(tmp: Path, studio_apps: bool = True) -> Path:
    """serve_config.yaml with one tight family deployment (sd15 on a100) for the 503 test,
    an app whose async tasks have a short deadline, and a two-replica LoRA family.
    ``studio_apps`` False leaves out the faces, backgrounds, upscaling and speech apps, the chat
    API and the document store, and their families (a cluster that tests the serving machinery
    starts faster without them)."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    args = config["applications"][0]["args"]
    if not studio_apps:
        args["apps"] = [a for a in args["apps"] if a["task"] not in STUDIO_TASKS]
        args.pop("chat", None)
        args.pop("documents", None)
        used = {a["family"] for a in args["apps"]}
        args["families"] = {name: f for name, f in args["families"].items() if name in used}
        for family in args["families"].values():
            family.pop("helpers", None)
            for component in ("face_analysis", "face_adapter"):
                family.get("components", {}).pop(component, None)
    for family in args["families"].values():  # one replica each: tests that count replicas know what runs
        family.pop("per_gpu", None)
        family["deployment"].pop("autoscaling_config", None)
        family["deployment"]["num_replicas"] = 1
    tight = copy.deepcopy(args["families"]["sd15"]["deployment"])
    tight.update(max_ongoing_requests=1, max_queued_requests=1)
    args["families"]["sd15"]["per_gpu"] = {"a100": tight}
    # Scales on its async backlog: one job at a time per replica, up to two replicas.
    args["families"]["sd15-scale"] = {
        "kind": "diffusion", "model": {"path": "tiny-sd15"},
        "deployment": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                                              "upscale_delay_s": 1, "downscale_delay_s": 4,
                                              "metrics_interval_s": 1, "look_back_period_s": 2},
                       "max_ongoing_requests": 1, "max_queued_requests": 4},
    }
    args["apps"].append({"app_id": SCALE_APP, "name": "SD 1.5 that scales on its queue", "family": "sd15-scale",
                         "task": "text2img", "inference_types": ["a10g"]})
    args["apps"].append({"app_id": DEADLINE_APP, "name": "SD 1.5 with a short task deadline", "family": "sd15",
                         "task": "text2img", "inference_types": ["a10g"],
                         "limits": {"task_deadline_seconds": DEADLINE_SECONDS}})
    # Two replicas with LoRAs only, for Serve's multiplexed routing of LoRA stacks.
    args["families"]["sd15-lora"] = {
        "kind": "diffusion", "model": {"path": "tiny-sd15"}, "components": {"loras": {"path": "tiny-loras-sd15"}},
        "deployment": {"num_replicas": 2, "max_ongoing_requests": 2, "max_queued_requests": 8},
    }
    args["apps"].append({"app_id": LORA_APP, "name": "SD 1.5 with LoRA stacks on two replicas",
                         "family": "sd15-lora", "task": "text2img", "inference_types": ["a10g"]})
    if "documents" in args:  # the documents' lifecycle: tenant-c has tight caps, tenant-b an 8 s retention
        args["documents"]["limits"].update(sweep_seconds=2, tenants={
            "tenant-c": {"max_documents_per_tenant": 3, "max_chunks_per_tenant": 12},
            "tenant-b": {"retention_days": 8 / 86400}})
    path = tmp / "serve_config.e2e.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
