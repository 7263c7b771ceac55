"""The builder turns serve_config.yaml into deployments without a cluster."""

import json
from pathlib import Path

import pytest
import yaml

from ingress.wiring.builder import INGRESS_ENV, build_app, family_deployments
from ingress.wiring.registry import ServiceConfig
from ingress.wiring.secrets import ROLE_FILES, SECRET_VARS, Secrets, key_digest

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


# --- a cluster: secrets are files on the pods; the Serve config holds only their paths -----------------

GENERATED = ROOT / "k8s" / "generated" / "20-rayservice.yaml"
#: Distinct values a cluster's Secrets would hold; none may appear in what Serve stores.
CLUSTER_SECRETS = {
    "api-keys.json": json.dumps({"sk-cluster-api-key-1": "acme"}),
    "webhook-secrets.json": json.dumps({"acme": "whsec_Y2x1c3Rlci13ZWJob29r"}),
    "STUDIO_STORAGE_S3_ACCESS_KEY_ID": "AKIA-CLUSTER-ID", "STUDIO_STORAGE_S3_SECRET_ACCESS_KEY": "s3-cluster-secret",
    "STUDIO_OPENAI_API_KEY": "sk-openai-cluster", "STUDIO_TAVILY_API_KEY": "tvly-cluster",
    "STUDIO_ELEVENLABS_API_KEY": "xi-cluster", "STUDIO_QDRANT_API_KEY": "qdrant-cluster",
}


def _cluster_args() -> dict:
    """The registry args of the committed KubeRay manifest's serveConfigV2."""
    service = yaml.safe_load(GENERATED.read_text())
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    return next(a for a in config["applications"] if a["import_path"] == "ingress.wiring.builder:build_app")["args"]


def _built_cluster_app(monkeypatch, secrets_dir: Path | None = None):
    """Serve's own build of the cluster app (what the controller stores): every deployment, handles in place."""
    from ray.serve._private.build_app import build_app as serve_build

    for name in SECRET_VARS:
        monkeypatch.delenv(name, raising=False)
    args = _cluster_args() if secrets_dir is None else {**_cluster_args(), "secrets_dir": str(secrets_dir)}
    return serve_build(build_app(args), name="studio").deployments


def _write_role_dirs(root: Path) -> None:
    """Each role's directory as the pods mount it, with CLUSTER_SECRETS' values."""
    for role, files in ROLE_FILES.items():
        (root / role).mkdir(parents=True)
        for name in files:
            (root / role / name).write_text(CLUSTER_SECRETS.get(name, f"{name.lower()}-cluster-value"))


def _secret_needles() -> list[str]:
    needles = [v for name, v in CLUSTER_SECRETS.items() if not name.endswith(".json")]
    needles += [f"{name.lower()}-cluster-value" for files in ROLE_FILES.values() for name in files
                if name not in CLUSTER_SECRETS]
    needles += ["sk-cluster-api-key-1", key_digest("sk-cluster-api-key-1"), "whsec_Y2x1c3Rlci13ZWJob29r"]
    return needles


def test_a_cluster_build_holds_no_secret_value(monkeypatch, tmp_path):
    """Every deployment's options, init arguments and the exact bytes Serve's controller checkpoints
    (replica and deployment config protos) hold no secret, even with the secret files readable by
    the builder's process."""
    root = tmp_path / "secrets"
    _write_role_dirs(root)
    deployments = _built_cluster_app(monkeypatch, root)
    assert {d.name for d in deployments} >= {"ingress", "tasks", "chat", "documents", *DEPLOYMENTS}
    for d in deployments:
        stored = d._replica_config.to_proto_bytes() + d._deployment_config.to_proto_bytes()
        text = repr((d.ray_actor_options, d.init_args, d.init_kwargs, d._deployment_config))
        for needle in _secret_needles():
            assert needle.encode() not in stored and needle not in text, (d.name, needle)
        env = d.ray_actor_options["runtime_env"]["env_vars"]
        assert not set(env) & (set(SECRET_VARS) - {"STUDIO_API_KEYS_FILE", "STUDIO_WEBHOOK_SECRETS_FILE"}), d.name
        secretish = {k: v for k, v in env.items() if k not in INGRESS_ENV}  # the ingress's malloc setting is no path
        assert all(Path(value).is_relative_to(root) for value in secretish.values()), (d.name, env)


def test_a_cluster_build_tells_each_deployment_its_own_role_directory(monkeypatch):
    deployments = {d.name: d.ray_actor_options["runtime_env"]["env_vars"] for d in _built_cluster_app(monkeypatch)}
    root = _cluster_args()["secrets_dir"]
    assert deployments.pop("ingress") == {"STUDIO_SECRETS_DIR": f"{root}/ingress",
                                          "STUDIO_API_KEYS_FILE": f"{root}/ingress/api-keys.json", **INGRESS_ENV}
    assert deployments.pop("tasks") == {"STUDIO_SECRETS_DIR": f"{root}/coordinator",
                                        "STUDIO_WEBHOOK_SECRETS_FILE": f"{root}/coordinator/webhook-secrets.json"}
    assert deployments.pop("chat") == {"STUDIO_SECRETS_DIR": f"{root}/chat"}
    assert deployments.pop("documents") == {"STUDIO_SECRETS_DIR": f"{root}/documents"}
    assert deployments.pop("elevenlabs-a10g") == {"STUDIO_SECRETS_DIR": f"{root}/speech-vendor"}
    assert deployments and all(env == {"STUDIO_SECRETS_DIR": f"{root}/family"} for env in deployments.values())
    # No webhook tenant list in a cluster: the builder cannot read the secrets to know it.
    assert all("STUDIO_WEBHOOK_TENANTS" not in env and "STUDIO_API_KEY_DIGESTS" not in env for env in deployments.values())


def test_each_deployment_finds_its_directory_mounted_where_it_runs(monkeypatch):
    """The builder's paths and the manifests' mounts agree: a deployment pinned to a GPU type runs on that
    group, one on the control resource on the cpu group; its directory and files are mounted there."""
    service = yaml.safe_load(GENERATED.read_text())
    mounts = {}
    for group in [*service["spec"]["rayClusterConfig"]["workerGroupSpecs"]]:
        (container,) = group["template"]["spec"]["containers"]
        mounts[group["groupName"]] = {m["mountPath"] for m in container["volumeMounts"]}
    control = next(iter(_cluster_args()["control_pool"]["resources"]))
    for d in _built_cluster_app(monkeypatch):
        (resource,) = d.ray_actor_options["resources"]
        group = "cpu" if resource == control else resource
        env = d.ray_actor_options["runtime_env"]["env_vars"]
        assert env["STUDIO_SECRETS_DIR"] in mounts[group], (d.name, group)
        for name, path in env.items():
            if name.endswith("_FILE"):
                role = Path(path).parent.name
                assert Path(path).parent.as_posix() in mounts[group] and Path(path).name in ROLE_FILES[role]


def test_a_cluster_build_refuses_secrets_in_the_builders_environment(monkeypatch):
    monkeypatch.setenv("STUDIO_OPENAI_API_KEY", "sk-on-the-head")
    with pytest.raises(ValueError, match="secrets_dir is set, yet the builder was given STUDIO_OPENAI_API_KEY") as info:
        build_app(_cluster_args())
    assert "sk-on-the-head" not in str(info.value)
    monkeypatch.delenv("STUDIO_OPENAI_API_KEY")
    with pytest.raises(ValueError, match="STUDIO_API_KEYS"):
        build_app(_cluster_args(), secrets=Secrets.read({"STUDIO_API_KEYS": json.dumps({"k": "acme"})}))
    with pytest.raises(ValueError, match="absolute path"):
        build_app({**_cluster_args(), "secrets_dir": "relative/dir"})
