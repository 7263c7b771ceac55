"""The launcher's defaults point at the repository's files (it moved under ingress/wiring/)."""

from __future__ import annotations

from pathlib import Path

from ingress.wiring.local import ROOT, load_app_config

REPO = Path(__file__).resolve().parents[3]


def test_the_default_config_is_the_repositorys_serve_config():
    assert ROOT == REPO
    assert (ROOT / "serve_config.yaml").is_file()
    app = load_app_config(ROOT / "serve_config.yaml", "studio")
    assert app["import_path"] == "ingress.wiring.builder:build_app"
