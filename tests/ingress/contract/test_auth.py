import json

import pytest

from ingress.contract.auth import KeyRing
from ingress.contract.errors import Unauthorized
from ingress.wiring.secrets import key_digest


def test_keys_map_to_tenants(tmp_path):
    f = tmp_path / "keys.json"
    f.write_text(json.dumps({"k-file": "tenant-b"}))
    ring = KeyRing.load({"k-env": "tenant-a"}, f)
    assert ring.tenant("Bearer k-env") == "tenant-a"
    assert ring.tenant("bearer k-file") == "tenant-b"
    assert len(ring) == 2


@pytest.mark.parametrize("header", [None, "", "k-env", "Basic k-env", "Bearer ", "Bearer k-nope"])
def test_refused(header):
    with pytest.raises(Unauthorized):
        KeyRing({"k-env": "tenant-a"}).tenant(header)


def test_keys_are_not_kept_in_clear():
    ring = KeyRing({"k-secret-value": "tenant-a"})
    assert "k-secret-value" not in repr(vars(ring))


@pytest.mark.parametrize("tenant", ["../other", "-lead", "_lead", "a b", "x" * 129, "", "ténant"])
def test_tenant_names_the_storage_rule_rejects_fail_at_start_up(tenant):
    # The same rule as storage keys: a tenant that could log in but not store would be a 500.
    with pytest.raises(ValueError) as info:
        KeyRing({"k": tenant})
    assert "A-Za-z0-9" in str(info.value)


def test_key_digests_authenticate_without_the_keys():
    ring = KeyRing(digests={key_digest("k-live"): "acme"})
    assert ring.tenant("Bearer k-live") == "acme"
    with pytest.raises(Unauthorized):
        ring.tenant("Bearer k-other")


def test_no_keys_refuses_everything():
    with pytest.raises(Unauthorized):
        KeyRing.load({}, None).tenant("Bearer anything")
