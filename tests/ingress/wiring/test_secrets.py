"""Each deployment gets only the secrets it needs; the launcher's own environment loses them."""

import json

import pytest

from ingress.wiring.secrets import SECRET_VARS, Secrets, key_digest

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
