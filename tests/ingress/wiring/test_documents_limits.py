"""The registry's ``documents.limits``: the caps, retention and per-tenant overrides are bounded
where they enter, and reach the document store as the builder passes them (``model_dump``)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deployments.documents.service import DocumentLimits as StoreLimits
from ingress.wiring.registry import ServiceConfig

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def args():
    return yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]


def _with_limits(args, **limits):
    changed = copy.deepcopy(args)
    changed["documents"]["limits"].update(limits)
    return changed


def test_defaults_reach_the_store(args):
    limits = ServiceConfig.model_validate(args).documents.limits  # type: ignore[union-attr]
    assert (limits.max_documents_per_tenant, limits.max_chunks_per_tenant, limits.retention_days) == (1000, 200_000, 30)
    store = StoreLimits.from_dict(limits.model_dump())
    assert store.for_tenant("anyone").retention_days == 30 and store.sweep_seconds == 3600


def test_tenant_overrides_reach_the_store(args):
    config = ServiceConfig.model_validate(_with_limits(
        args, max_documents_per_tenant=50, tenants={"big": {"max_documents_per_tenant": 5000},
                                                    "brief": {"retention_days": 0.5}}))
    store = StoreLimits.from_dict(config.documents.limits.model_dump())  # type: ignore[union-attr]
    assert store.for_tenant("big").max_documents == 5000 and store.for_tenant("big").retention_days == 30
    assert store.for_tenant("brief").retention_days == 0.5 and store.for_tenant("brief").max_documents == 50
    assert store.for_tenant("other").max_documents == 50


@pytest.mark.parametrize("limits, field", [
    ({"max_documents_per_tenant": 0}, "max_documents_per_tenant"),
    ({"max_chunks_per_tenant": -1}, "max_chunks_per_tenant"),
    ({"retention_days": 0}, "retention_days"),
    ({"retention_days": 40_000}, "retention_days"),
    ({"sweep_seconds": 0.5}, "sweep_seconds"),
    ({"pending_seconds": 10}, "pending_seconds"),
    ({"tenants": {"t": {"retention_days": 0}}}, "retention_days"),
    ({"tenants": {"t": {"max_documents": 3}}}, "max_documents"),
    ({"tenants": {"": {"retention_days": 1}}}, "tenant name"),
])
def test_out_of_range_limits_are_refused(args, limits, field):
    with pytest.raises(ValidationError) as caught:
        ServiceConfig.model_validate(_with_limits(args, **limits))
    assert field in str(caught.value)
