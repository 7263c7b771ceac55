"""The builder turns serve_config.yaml into deployments without a cluster."""

import json
from pathlib import Path

import yaml

from ingress.wiring.builder import build_app, family_deployments
from ingress.wiring.registry import ServiceConfig
from ingress.wiring.secrets import Secrets

ROOT = Path(__file__).resolve().parents[3]


def _args():
    return yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]


def test_family_deployments_are_pinned_to_their_gpu_type(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(tmp_path))
    bound = family_deployments(ServiceConfig.model_validate(_args()))
    assert list(bound) == DEPLOYMENTS  # registry order, whatever the binding order
    models = {"rembg": "tiny-saliency", "esrgan": "tiny-esrgan-4x", "sd-x4": "tiny-sd-x4-upscaler",
              "piper": "tiny-piper-voice", "minilm": "tiny-minilm", "local-llm": "tiny-chat-llm"}
    for name, app in bound.items():
        d = app._bound_deployment
        gpu = name.rsplit("-", 1)[1]
        family = name.rsplit("-", 1)[0]
        assert d.name == name
        assert d.init_kwargs["gpu"] == gpu
        if family == "elevenlabs":  # a vendor: no GPU, on the control pool; its model is ElevenLabs' id
            assert d.ray_actor_options["num_cpus"] == 0 and "resources" not in d.ray_actor_options
            assert d.init_args[0] == "eleven_multilingual_v2"
            continue
        assert d.ray_actor_options["resources"] == {gpu: 1}
        assert d.ray_actor_options["num_cpus"] == 0
        if family in ("sd15", "sdxl"):
            assert d.max_ongoing_requests == 2 and d.max_queued_requests == 8
        assert d.init_args[0] == str(tmp_path / models.get(family, f"tiny-{family}"))


DEPLOYMENTS = ["sd15-a10g", "sd15-a100", "sdxl-a100", "sdxl-h100", "rembg-a10g", "esrgan-a10g", "sd-x4-a10g",
               "piper-a10g", "elevenlabs-a10g", "minilm-a10g", "local-llm-a10g"]


def test_each_kind_gets_its_own_arguments_and_helpers_their_handles(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(tmp_path))
    args = _args()
    args["families"]["esrgan"].update(max_output_pixels=1_000_000, tile=128, tile_overlap=8)
    bound = family_deployments(ServiceConfig.model_validate(args))
    esrgan = bound["esrgan-a10g"]._bound_deployment.init_kwargs
    assert (esrgan["max_output_pixels"], esrgan["tile"], esrgan["tile_overlap"]) == (1_000_000, 128, 8)
    assert "tasks" not in esrgan and "helpers" not in esrgan
    assert bound["sd-x4-a10g"]._bound_deployment.init_kwargs["max_output_pixels"] == 2048 * 2048
    for gpu in ("a100", "h100"):  # rembg runs on a10g only: both sdxl deployments call that one
        sdxl = bound[f"sdxl-{gpu}"]._bound_deployment.init_kwargs
        assert sdxl["helpers"]["matting"] is bound["rembg-a10g"]
        assert {"face", "avatar", "replace_background"} <= set(sdxl["tasks"])
        assert sdxl["components"]["face_analysis"] == str(tmp_path / "tiny-face-pack")
    assert "helpers" not in bound["sd15-a10g"]._bound_deployment.init_kwargs
    args["apps"].append({"app_id": "ap-rembg-a100", "name": "x", "family": "rembg", "task": "remove_background",
                         "inference_types": ["a100"]})
    bound = family_deployments(ServiceConfig.model_validate(args))
    assert bound["sdxl-a100"]._bound_deployment.init_kwargs["helpers"]["matting"] is bound["rembg-a100"]
    assert bound["sdxl-h100"]._bound_deployment.init_kwargs["helpers"]["matting"] is bound["rembg-a10g"]


def test_build_app_binds_the_ingress_with_every_handle(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("STUDIO_QDRANT_PATH", str(tmp_path / "qdrant"))
    app = build_app(_args())
    d = app._bound_deployment
    assert d.name == "ingress"
    assert d.max_ongoing_requests == 64 and d.max_queued_requests == 256
    config, handles, coordinator, services = d.init_args
    assert list(handles) == DEPLOYMENTS
    documents, chat = services["documents"]._bound_deployment, services["chat"]._bound_deployment
    assert documents.name == "documents" and documents.num_replicas == 1  # Qdrant's local mode: one process
    assert documents.init_args[0] is handles["minilm-a10g"]
    assert documents.init_kwargs["qdrant_path"] == str(tmp_path / "qdrant")
    assert documents.init_kwargs["limits"]["chunk_chars"] == 1000
    assert chat.name == "chat" and chat.init_kwargs["local_llm"] is handles["local-llm-a10g"]
    assert chat.init_kwargs["documents"] is services["documents"]
    assert "resources" not in chat.ray_actor_options and "resources" not in documents.ray_actor_options
    tasks = coordinator._bound_deployment
    assert tasks.name == "tasks" and tasks.num_replicas == 1
    assert set(tasks.init_args[0]) == set(handles)
    assert config["apps"][0]["app_id"] == "ap-sd15-txt2img"


def test_per_gpu_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(tmp_path))
    args = _args()
    args["families"]["sd15"]["per_gpu"] = {"a100": {"num_replicas": 3, "max_ongoing_requests": 4}}
    bound = family_deployments(ServiceConfig.model_validate(args))
    assert bound["sd15-a100"]._bound_deployment.num_replicas == 3
    assert bound["sd15-a10g"]._bound_deployment.num_replicas == 1


def test_hub_ids_pass_through(tmp_path, monkeypatch):
    args = _args()
    args["families"]["sdxl"]["model"] = {"hub_id": "stabilityai/stable-diffusion-xl-base-1.0", "revision": "main"}
    bound = family_deployments(ServiceConfig.model_validate(args))
    d = bound["sdxl-a100"]._bound_deployment
    assert d.init_args[0] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert d.init_kwargs["revision"] == "main"


def test_each_deployment_gets_its_share_of_the_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_MODELS_DIR", str(tmp_path))
    found = Secrets.read({
        "STUDIO_API_KEYS": json.dumps({"sk-live": "acme"}),
        "STUDIO_WEBHOOK_SECRETS": json.dumps({"acme": "whsec_c2VjcmV0"}),
        "STUDIO_STORAGE_S3_SECRET_ACCESS_KEY": "s3-secret",
        "STUDIO_OPENAI_API_KEY": "sk-openai", "STUDIO_TAVILY_API_KEY": "tvly-key",
        "STUDIO_ELEVENLABS_API_KEY": "xi-key", "STUDIO_QDRANT_API_KEY": "qdrant-key",
    })
    ingress = build_app(_args(), secrets=found)._bound_deployment
    _, handles, coordinator, services = ingress.init_args
    envs = {"ingress": ingress.ray_actor_options["runtime_env"]["env_vars"],
            "tasks": coordinator._bound_deployment.ray_actor_options["runtime_env"]["env_vars"]}
    for name, family in handles.items():
        envs[name] = family._bound_deployment.ray_actor_options["runtime_env"]["env_vars"]
        assert family._bound_deployment.ray_actor_options.get("resources") or name == "elevenlabs-a10g"  # pinned
    for name, service in services.items():
        envs[name] = service._bound_deployment.ray_actor_options.get("runtime_env", {}).get("env_vars", {})
    assert all("sk-live" not in json.dumps(env) for env in envs.values())
    assert [name for name, env in envs.items() if "STUDIO_WEBHOOK_SECRETS" in env] == ["tasks"]
    assert all(env["STUDIO_STORAGE_S3_SECRET_ACCESS_KEY"] == "s3-secret" for name, env in envs.items()
               if name not in services)
    assert "STUDIO_API_KEY_DIGESTS" in envs["ingress"]
    # The vendors' keys: the LLMs' and Tavily's to the chat service only, ElevenLabs' to its family, Qdrant's to
    # the document store; the chat service and the document store get no storage credentials.
    holders = {key: [name for name, env in envs.items() if key in env] for key in
               ("STUDIO_OPENAI_API_KEY", "STUDIO_TAVILY_API_KEY", "STUDIO_ELEVENLABS_API_KEY", "STUDIO_QDRANT_API_KEY")}
    assert holders == {"STUDIO_OPENAI_API_KEY": ["chat"], "STUDIO_TAVILY_API_KEY": ["chat"],
                       "STUDIO_ELEVENLABS_API_KEY": ["elevenlabs-a10g"], "STUDIO_QDRANT_API_KEY": ["documents"]}
    assert envs["chat"] == {"STUDIO_OPENAI_API_KEY": "sk-openai", "STUDIO_TAVILY_API_KEY": "tvly-key"}
