"""Tests for storage.keys."""

from __future__ import annotations

import pytest

from storage.keys import output_key, tenant_of, validate_key


def test_output_key_layout() -> None:
    assert output_key("acme", "req-1", 0) == "tenants/acme/images/req-1/0.png"
    assert output_key("acme", "0f3a_b", 12, ext="webp") == "tenants/acme/images/0f3a_b/12.webp"


@pytest.mark.parametrize("tenant", ["", "..", ".", "a/b", "a b", "-x", "ténant", "a\x00", "x" * 129, "a\\b"])
def test_output_key_rejects_bad_tenant(tenant: str) -> None:
    with pytest.raises(ValueError):
        output_key(tenant, "req", 0)


@pytest.mark.parametrize("request_id", ["", "..", "a/b", "a.b", "../x", "x?y"])
def test_output_key_rejects_bad_request_id(request_id: str) -> None:
    with pytest.raises(ValueError):
        output_key("acme", request_id, 0)


@pytest.mark.parametrize("index", [-1, True, 1.0, "1"])
def test_output_key_rejects_bad_index(index: object) -> None:
    with pytest.raises(ValueError):
        output_key("acme", "req", index)  # type: ignore[arg-type]


@pytest.mark.parametrize("ext", ["", "PNG", "p/g", ".png", "png.", "x" * 11])
def test_output_key_rejects_bad_ext(ext: str) -> None:
    with pytest.raises(ValueError):
        output_key("acme", "req", 0, ext=ext)


def test_tenant_of_roundtrip() -> None:
    assert tenant_of(output_key("acme", "r1", 3)) == "acme"


@pytest.mark.parametrize(
    "key",
    ["tenants/acme", "tenants//x", "other/acme/x", "tenants/../x", "tenants/-bad/x", "/tenants/a/x", ""],
)
def test_tenant_of_none_for_foreign_or_invalid(key: str) -> None:
    assert tenant_of(key) is None


@pytest.mark.parametrize("key", ["a", "a/b.png", "tenants/x/images/r/0.png", "dot.file", ".hidden/x"])
def test_validate_key_accepts(key: str) -> None:
    assert validate_key(key) == key
