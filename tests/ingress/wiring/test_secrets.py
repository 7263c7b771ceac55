"""Each deployment gets only the secrets it needs; the launcher's own environment loses them; in a
cluster each replica reads its own role's files."""

import json
from pathlib import Path

import pytest

from ingress.wiring.secrets import (
    API_KEYS_FILENAME,
    ROLE_FILES,
    SECRET_VARS,
    WEBHOOK_SECRETS_FILENAME,
    SecretFiles,
    Secrets,
    key_digest,
    routing,
)

ENV = {
    "STUDIO_API_KEYS": json.dumps({"sk-live-1": "acme"}),
    "STUDIO_WEBHOOK_SECRETS": json.dumps({"acme": "whsec_c2VjcmV0"}),
    "STUDIO_STORAGE_S3_ACCESS_KEY_ID": "AKIA-test",
    "STUDIO_STORAGE_S3_SECRET_ACCESS_KEY": "s3-secret",
    "STUDIO_STORAGE_SIGNING_SECRET": "signing-secret",
    "STUDIO_STORAGE_BACKEND": "s3",
}


def test_take_removes_every_secret_from_the_environment():
    environ = dict(ENV)
    found = Secrets.take(environ)
    assert environ == {"STUDIO_STORAGE_BACKEND": "s3"}
    assert set(found.env) == set(ENV) - {"STUDIO_STORAGE_BACKEND"}
    assert set(found.env) <= set(SECRET_VARS)


def test_each_deployment_gets_only_its_share():
    found = Secrets.read(ENV)
    ingress, coordinator, family = found.for_ingress(), found.for_coordinator(), found.for_family()
    everything = " ".join(v for env in (ingress, coordinator, family) for v in env.values())
    assert "sk-live-1" not in everything  # no replica ever sees an API key
    assert json.loads(ingress["STUDIO_API_KEY_DIGESTS"]) == {key_digest("sk-live-1"): "acme"}
    assert json.loads(ingress["STUDIO_WEBHOOK_TENANTS"]) == ["acme"]
    assert "whsec_c2VjcmV0" not in " ".join(ingress.values()) + " ".join(family.values())
    assert coordinator["STUDIO_WEBHOOK_SECRETS"] == ENV["STUDIO_WEBHOOK_SECRETS"]
    assert family == {"STUDIO_STORAGE_S3_ACCESS_KEY_ID": "AKIA-test", "STUDIO_STORAGE_S3_SECRET_ACCESS_KEY": "s3-secret"}
    assert "STUDIO_STORAGE_SIGNING_SECRET" in ingress and "STUDIO_STORAGE_SIGNING_SECRET" not in family


def test_keys_files_are_read_once_and_their_path_goes_nowhere(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"sk-from-file": "beta"}))
    found = Secrets.read({"STUDIO_API_KEYS_FILE": str(keys)})
    ingress = found.for_ingress()
    assert json.loads(ingress["STUDIO_API_KEY_DIGESTS"]) == {key_digest("sk-from-file"): "beta"}
    assert str(keys) not in " ".join(ingress.values())


@pytest.mark.parametrize("env", [
    {"STUDIO_API_KEYS": json.dumps({"k": "bad tenant"})},
    {"STUDIO_API_KEYS": "not json"},
    {"STUDIO_API_KEYS": json.dumps(["k"])},
    {"STUDIO_WEBHOOK_SECRETS": json.dumps({"-x": "whsec_c2VjcmV0"})},
    {"STUDIO_WEBHOOK_SECRETS": json.dumps({"acme": "whsec_!!not base64!!"})},
])
def test_bad_configuration_fails_fast_with_a_clear_message(env):
    with pytest.raises(ValueError) as info:
        Secrets.read(env)
    assert "STUDIO_" in str(info.value) or "tenant" in str(info.value)


# --- a cluster: each replica reads its role's files ---------------------------------------------


def _mounted_like_kubernetes(directory, files: dict[str, str]):
    """A role directory as the kubelet writes a projected volume: each file a symlink into ``..data``."""
    data = directory / "..2026_01_01_00_00_00.000000001"
    data.mkdir(parents=True)
    for name, value in files.items():
        (data / name).write_text(value)
    (directory / "..data").symlink_to(data.name)
    for name in files:
        (directory / name).symlink_to(f"..data/{name}")
    return directory


def test_replicas_read_their_secrets_from_their_role_directory(tmp_path, monkeypatch):
    from deployments.vendors import VendorSettings
    from storage.settings import StorageSettings

    for name in (*SECRET_VARS, "STUDIO_SECRETS_DIR"):
        monkeypatch.delenv(name, raising=False)
    family = _mounted_like_kubernetes(tmp_path / "family", {"STUDIO_STORAGE_S3_ACCESS_KEY_ID": "AKIA-file",
                                                            "STUDIO_STORAGE_S3_SECRET_ACCESS_KEY": "s3-file\n"})
    speech = _mounted_like_kubernetes(tmp_path / "speech-vendor", {"STUDIO_ELEVENLABS_API_KEY": "xi-file"})
    documents = _mounted_like_kubernetes(tmp_path / "documents", {"STUDIO_QDRANT_API_KEY": "qdrant-file"})
    monkeypatch.setenv("STUDIO_SECRETS_DIR", str(family))
    storage = StorageSettings()
    assert storage.s3_access_key_id is not None and storage.s3_secret_access_key is not None
    assert (storage.s3_access_key_id.get_secret_value(), storage.s3_secret_access_key.get_secret_value()) == (
        "AKIA-file", "s3-file")
    assert VendorSettings().elevenlabs_api_key is None  # another role's key is not in this directory
    monkeypatch.setenv("STUDIO_SECRETS_DIR", str(speech))
    assert VendorSettings().endpoint("elevenlabs").api_key == "xi-file"
    assert StorageSettings().s3_secret_access_key is None
    monkeypatch.setenv("STUDIO_SECRETS_DIR", str(documents))
    assert VendorSettings().qdrant_api_key == "qdrant-file" and not VendorSettings().configured("openai")
    monkeypatch.setenv("STUDIO_QDRANT_API_KEY", "qdrant-env")  # the embedded default: the environment wins
    assert VendorSettings().qdrant_api_key == "qdrant-env"


def test_a_missing_role_directory_stops_the_replica(tmp_path, monkeypatch):
    from storage.settings import StorageSettings

    monkeypatch.setenv("STUDIO_SECRETS_DIR", str(tmp_path / "not-mounted"))
    with pytest.raises(RuntimeError, match="not-mounted is not a directory"):
        StorageSettings()


def test_the_ingress_hashes_the_keys_of_its_file(tmp_path):
    from ingress.contract.auth import KeyRing
    from ingress.contract.errors import Unauthorized

    env = SecretFiles.at(str(tmp_path)).for_ingress()
    _mounted_like_kubernetes(tmp_path / "ingress", {API_KEYS_FILENAME: json.dumps({"sk-file-key": "acme"})})
    ring = KeyRing.load({}, Path(env["STUDIO_API_KEYS_FILE"]))
    assert ring.tenant("Bearer sk-file-key") == "acme"
    with pytest.raises(Unauthorized):
        ring.tenant("Bearer sk-other")
    assert "sk-file-key" not in repr(vars(ring))


def test_cluster_routing_hands_out_paths_of_each_role():
    files = SecretFiles.at("/var/run/secrets/studio")
    assert files.for_family() == {"STUDIO_SECRETS_DIR": "/var/run/secrets/studio/family"}
    assert files.for_family("tts_vendor") == {"STUDIO_SECRETS_DIR": "/var/run/secrets/studio/speech-vendor"}
    assert files.for_coordinator()["STUDIO_WEBHOOK_SECRETS_FILE"] == "/var/run/secrets/studio/coordinator/" + \
        WEBHOOK_SECRETS_FILENAME
    assert WEBHOOK_SECRETS_FILENAME in ROLE_FILES["coordinator"] and API_KEYS_FILENAME in ROLE_FILES["ingress"]
    for bad in ("relative/dir", "/var/../etc"):
        with pytest.raises(ValueError, match="absolute path without"):
            SecretFiles.at(bad)


def test_routing_picks_files_in_a_cluster_and_values_otherwise():
    assert isinstance(routing("/var/run/secrets/studio", environ={}), SecretFiles)
    assert routing(None, environ=ENV).for_family() == Secrets.read(ENV).for_family()
    with pytest.raises(ValueError, match="STUDIO_STORAGE_S3_SECRET_ACCESS_KEY") as info:
        routing("/var/run/secrets/studio", environ=ENV)
    assert "s3-secret" not in str(info.value)


def test_the_document_store_gives_qdrant_the_key_of_its_file(tmp_path, monkeypatch):
    import qdrant_client

    from deployments.documents.vectors import VectorIndex

    made: list[dict] = []
    monkeypatch.setattr(qdrant_client, "QdrantClient", lambda **kwargs: made.append(kwargs))  # no connection
    monkeypatch.delenv("STUDIO_QDRANT_API_KEY", raising=False)
    documents = _mounted_like_kubernetes(tmp_path / "documents", {"STUDIO_QDRANT_API_KEY": "qdrant-file"})
    monkeypatch.setenv("STUDIO_SECRETS_DIR", str(documents))
    VectorIndex(url="http://qdrant:6333")
    assert made[-1]["api_key"] == "qdrant-file" and made[-1]["url"] == "http://qdrant:6333"
