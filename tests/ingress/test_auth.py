import json

import pytest

from ingress.auth import KeyRing
from ingress.errors import Unauthorized


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


def test_bad_tenant_names_are_refused():
    with pytest.raises(ValueError):
        KeyRing({"k": "../other"})


def test_no_keys_refuses_everything():
    with pytest.raises(Unauthorized):
        KeyRing.load({}, None).tenant("Bearer anything")
