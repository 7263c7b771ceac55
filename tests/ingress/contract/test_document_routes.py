"""The document routes in process (no Ray) over a real document store (Qdrant local mode in memory,
real PDFs parsed in the store's child process) behind a stand-in handle; only the embedder is a
stand-in (a deterministic bag-of-words vector). ``pdfVectorStore`` with a name, ``listDocuments``
with its cursor and usage, ``getDocument``, the idempotent ``deleteDocument``, tenancy (another
tenant's id answers as an unknown one) and every refusal a 422 naming its field or cap."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from deployments.documents.service import DocumentStore
from ingress.contract.api import PREFIX, Studio, create_api
from ingress.contract.auth import KeyRing
from ingress.contract.errors import QuotaExceeded
from ingress.wiring.registry import Registry, ServiceConfig
from ingress.wiring.settings import IngressSettings
from storage.local import LocalObjectStore
from tests.deployments.documents.test_pdf import make_pdf
from tests.support.handles import Method

ROOT = Path(__file__).resolve().parents[3]
A = {"Authorization": "Bearer sk-docs-a"}
B = {"Authorization": "Bearer sk-docs-b"}
DIM = 16


class _Embedder:
    """The embedding deployment's handle: one deterministic unit vector per text."""

    def __init__(self) -> None:
        async def embed(texts: list[str]) -> list[list[float]]:
            out = []
            for text in texts:
                vector = [0.0] * DIM
                for word in text.lower().split():
                    vector[hashlib.sha256(word.encode()).digest()[0] % DIM] += 1.0
                norm = sum(v * v for v in vector) ** 0.5 or 1.0
                out.append([v / norm for v in vector])
            return out

        self.embed = Method(embed)


class _Handle:
    """The document store's DeploymentHandle around a real store (``handle.<method>.remote(...)``)."""

    def __init__(self, store: DocumentStore):
        for name in ("store", "get", "delete", "list_documents", "search"):
            setattr(self, name, Method(getattr(store, name)))


@pytest.fixture
def store():
    opened = DocumentStore(_Embedder(), qdrant_path=":memory:", limits={"max_documents_per_tenant": 4})
    yield opened
    opened.close()


class _Admission:
    """The tenant quotas: records checks and settlements; refuses pages when ``full``."""

    def __init__(self, full: bool = False):
        self.full, self.checks, self.settled = full, [], []

    async def check(self, tenant, costs, task=False):
        self.checks.append((tenant, costs))
        if self.full and "document_pages" in costs:
            raise QuotaExceeded("quota: 10 document pages per minute; retry in 7 s", 7)

    def settle(self, tenant, rate, amount):
        self.settled.append((tenant, rate, amount))


def _client(documents: Any, admission: Any = None) -> TestClient:
    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    root = Path(tempfile.mkdtemp(prefix="studio-docs-"))
    studio = Studio(
        registry=Registry(ServiceConfig.model_validate({**args, "models_dir": str(root)})),
        keys=KeyRing({"sk-docs-a": "tenant-a", "sk-docs-b": "tenant-b"}), dispatcher=None,  # type: ignore[arg-type]
        store=LocalObjectStore(root, "http://testserver", b"docs-test-secret"), settings=IngressSettings(),
        url_expiry_seconds=3600, documents=documents, admission=admission,
    )
    return TestClient(create_api(studio))


def _uri(text: str) -> str:
    return "data:application/pdf;base64," + base64.b64encode(make_pdf([text])).decode()


def test_store_list_get_and_delete(store):
    client = _client(_Handle(store))
    ids = []
    for i, name in enumerate([None, "Penguins & rocks.pdf", "  notes  "]):
        body: dict[str, Any] = {"url": _uri(f"Document {i} says penguins nest on volcanic rock.")}
        if name is not None:
            body["name"] = name
        r = client.post(f"{PREFIX}/pdfVectorStore", headers=A, json=body)
        assert r.status_code == 200, r.text
        env = r.json()
        assert set(env["output"]) == {"id", "chunks"} and env["meta"]["size"] > 100
        assert env["meta"]["name"] == [DEFAULT := "document.pdf", "Penguins & rocks.pdf", "notes"][i]
        ids.append(env["output"]["id"])

    first = client.post(f"{PREFIX}/listDocuments", headers=A, json={"limit": 2}).json()
    assert first["status"] == "SUCCESS" and len(first["output"]["documents"]) == 2
    cursor = first["output"]["next_cursor"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cursor) and first["input"] == {"limit": 2, "cursor": None}
    second = client.post(f"{PREFIX}/listDocuments", headers=A, json={"limit": 2, "cursor": cursor}).json()
    assert len(second["output"]["documents"]) == 1 and second["output"]["next_cursor"] is None
    listed = first["output"]["documents"] + second["output"]["documents"]
    assert sorted(d["id"] for d in listed) == sorted(ids)
    assert {d["name"] for d in listed} == {DEFAULT, "Penguins & rocks.pdf", "notes"}
    for item in listed:
        assert set(item) == {"id", "name", "size", "chunks", "pages", "created"} and item["pages"] == 1
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", item["created"])
    assert first["output"]["usage"] == {"documents": 3, "chunks": sum(d["chunks"] for d in listed),
                                        "max_documents": 4, "max_chunks": 200_000, "retention_days": 30.0}
    assert client.post(f"{PREFIX}/listDocuments", headers=A, json={}).json()["output"]["next_cursor"] is None

    got = client.post(f"{PREFIX}/getDocument", headers=A, json={"id": ids[1]}).json()["output"]
    assert got == next(d for d in listed if d["id"] == ids[1])

    r = client.post(f"{PREFIX}/deleteDocument", headers=A, json={"id": ids[1]})
    assert r.status_code == 200 and r.json()["output"] == {"id": ids[1], "deleted": True}
    again = client.post(f"{PREFIX}/deleteDocument", headers=A, json={"id": ids[1]})
    assert again.status_code == 200 and again.json()["output"] == {"id": ids[1], "deleted": False}
    assert client.post(f"{PREFIX}/getDocument", headers=A, json={"id": ids[1]}).status_code == 404
    left = client.post(f"{PREFIX}/listDocuments", headers=A, json={"limit": 100}).json()["output"]
    assert sorted(d["id"] for d in left["documents"]) == sorted([ids[0], ids[2]]) and left["usage"]["documents"] == 2


def test_another_tenants_id_answers_as_an_unknown_one(store):
    client = _client(_Handle(store))
    mine = client.post(f"{PREFIX}/pdfVectorStore", headers=A, json={"url": _uri("Tenant A's own page.")}).json()
    doc = mine["output"]["id"]
    for route in ("getDocument", "deleteDocument"):
        theirs = client.post(f"{PREFIX}/{route}", headers=B, json={"id": doc})
        unknown = client.post(f"{PREFIX}/{route}", headers=B, json={"id": "0" * 32})
        assert theirs.status_code == unknown.status_code, route
        body, other = theirs.json(), unknown.json()
        assert (body["error"], body["error_data"]) == (other["error"], other["error_data"]), route
        if route == "deleteDocument":
            assert theirs.status_code == 200 and body["output"] == {"id": doc, "deleted": False}
    assert client.post(f"{PREFIX}/listDocuments", headers=B, json={}).json()["output"]["documents"] == []
    assert client.post(f"{PREFIX}/getDocument", headers=A, json={"id": doc}).status_code == 200  # untouched


@pytest.mark.parametrize(("route", "body", "field"), [
    ("listDocuments", {"limit": 0}, "limit"),
    ("listDocuments", {"limit": 101}, "limit"),
    ("listDocuments", {"limit": "many"}, "limit"),
    ("listDocuments", {"cursor": "../../etc/passwd"}, "cursor"),
    ("listDocuments", {"cursor": "A" * 21 + "B"}, "cursor"),  # the right shape, but no cursor of ours
    ("pdfVectorStore", {"url": "data:application/pdf;base64,JVBERi0=", "name": "a\x07b.pdf"}, "name"),
    ("pdfVectorStore", {"url": "data:application/pdf;base64,JVBERi0=", "name": "x" * 201}, "name"),
    ("pdfVectorStore", {"url": "data:application/pdf;base64,JVBERi0=", "name": "   "}, "name"),
    ("pdfVectorStore", {"url": "data:application/pdf;base64,JVBERi0=", "name": "evil\u202efdp.pdf"}, "name"),
])
def test_bad_values_are_422_naming_the_field(store, route, body, field):
    r = _client(_Handle(store)).post(f"{PREFIX}/{route}", headers=A, json=body)
    assert r.status_code == 422 and r.json()["error"] == "ValidationError", r.text
    assert r.json()["error_data"].startswith(f"{field}"), r.text


def test_a_store_past_the_tenants_cap_is_422_naming_it(store):
    client = _client(_Handle(store))
    for i in range(4):
        assert client.post(f"{PREFIX}/pdfVectorStore", headers=A, json={"url": _uri(f"page {i}")}).status_code == 200
    r = client.post(f"{PREFIX}/pdfVectorStore", headers=A, json={"url": _uri("one too many")})
    assert r.status_code == 422 and r.json()["error_data"].startswith("url: this tenant already stores 4 documents")
    assert "at most 4 documents per tenant" in r.json()["error_data"]
    assert client.post(f"{PREFIX}/pdfVectorStore", headers=B, json={"url": _uri("B has room")}).status_code == 200


def test_pages_are_charged_to_the_tenants_quota(store):
    admission = _Admission()
    client = _client(_Handle(store), admission)
    body = {"url": "data:application/pdf;base64," + base64.b64encode(make_pdf(["one", "two", "three"])).decode()}
    assert client.post(f"{PREFIX}/pdfVectorStore", headers=A, json=body).status_code == 200
    pages = [c for c in admission.checks if "document_pages" in c[1]]
    assert pages == [("tenant-a", {"document_pages": 1})]  # one page admitted before the fetch
    assert admission.settled == [("tenant-a", "document_pages", 2)]  # the other two once they are known
    r = client.post(f"{PREFIX}/pdfVectorStore", headers=A, json={"url": "data:application/pdf;base64,R0lGODlh"})
    assert r.status_code == 422 and admission.settled[-1] == ("tenant-a", "document_pages", -1)  # refunded
    stored = []
    full = _client(_Handle(store), _Admission(full=True))
    store.store = lambda *args: stored.append(args)  # type: ignore[method-assign]
    r = full.post(f"{PREFIX}/pdfVectorStore", headers=A, json=body)
    assert r.status_code == 429 and r.headers["retry-after"] == "7" and stored == []


def test_without_a_document_store_the_routes_are_404():
    client = _client(None)
    for route, body in (("listDocuments", {}), ("getDocument", {"id": "d" * 32}), ("deleteDocument", {"id": "d" * 32})):
        r = client.post(f"{PREFIX}/{route}", headers=A, json=body)
        assert r.status_code == 404 and r.json()["error"] == "NotFound", route


def test_the_store_is_closed_once(store):
    asyncio.run(store.aclose())
    asyncio.run(store.aclose())
    assert store.closed and store.index.closed
