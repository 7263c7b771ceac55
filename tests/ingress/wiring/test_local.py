"""The launcher's defaults point at the repository's files (it moved under ingress/wiring/), and the
environment it starts Ray with."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingress.wiring.local import ROOT, load_app_config, serve_process_env, service_env

REPO = Path(__file__).resolve().parents[3]


def test_the_default_config_is_the_repositorys_serve_config():
    assert ROOT == REPO
    assert (ROOT / "serve_config.yaml").is_file()
    app = load_app_config(ROOT / "serve_config.yaml", "studio")
    assert app["import_path"] == "ingress.wiring.builder:build_app"


def test_the_launcher_starts_ray_in_throughput_mode_without_direct_ingress(tmp_path, monkeypatch):
    """Throughput mode turns on Serve's direct ingress (each ingress replica serving the whole API on a
    port of its own beside the proxy): the environment that starts Ray turns it off, whatever it held."""
    assert serve_process_env({}) == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
                                     "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
    # User code on the replica's own loop even outside throughput mode: a cancelled job's slot stays busy
    # until its thread ended (deployments/families/base.py).
    assert serve_process_env({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"})["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert serve_process_env({"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"})["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"
    assert serve_process_env({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"})["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "0"
    # What up() puts in its environment reaches every replica's shared runtime env too.
    for name, value in serve_process_env({"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}).items():
        monkeypatch.setenv(name, value)
    app = load_app_config(ROOT / "serve_config.yaml", "studio")
    env = service_env(app, port=8123, models_dir=tmp_path / "models", data_dir=tmp_path / "data")
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"


def test_the_launcher_applies_the_serve_env_before_anything_else(monkeypatch):
    """up() puts serve_process_env() in its environment first, before the replicas' env is made and Ray
    starts (stopped here at service_env, so no Ray node is started)."""
    from ingress.wiring import local

    class Stop(Exception):
        pass

    seen: dict[str, str] = {}

    def stop(*args, **kwargs):
        seen.update({k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")})
        raise Stop

    monkeypatch.setenv("RAY_SERVE_ENABLE_DIRECT_INGRESS", "1")
    monkeypatch.delenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", raising=False)
    monkeypatch.setattr(local, "service_env", stop)
    with pytest.raises(Stop):
        local.up(ROOT / "serve_config.yaml", 8123, ROOT / ".models", ROOT / ".data", tiny=False)
    assert seen["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0" and seen["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
