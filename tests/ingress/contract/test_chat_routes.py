"""The chat, document and speech routes in process (no Ray): stand-ins for the chat service and
the document store answer as their handles do, so the contract's shapes are checked exactly:
``chat``'s envelope, ``streamChat``'s NDJSON (errors before and after the first piece), the
document routes' 404s, and Text To Speech's single URL."""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from deployments.chat.messages import ChatReply, Retrieved, Source, TextDelta, Usage
from deployments.errors import DocumentNotFound, VendorError
from deployments.types import Output, Result
from ingress.contract.api import PREFIX, Studio, create_api
from ingress.contract.auth import KeyRing
from ingress.wiring.registry import Registry, ServiceConfig
from ingress.wiring.settings import IngressSettings
from storage.local import LocalObjectStore
from tests.support.handles import Method, Stream

ROOT = Path(__file__).resolve().parents[3]
AUTH = {"Authorization": "Bearer sk-chat-test"}
SOURCE = Source(kind="document", text="Penguins nest on rock.", score=0.8, document_id="doc1", chunk=0, page=2)




class _Chat:
    """The chat service's handle: ``chat.remote`` and ``options(stream=True).stream.remote``."""

    def __init__(self, events=(), error=None):
        self.jobs: list = []
        self.streams: list[Stream] = []
        self.events, self.error = list(events), error

        async def chat(job):
            self.jobs.append(job)
            if self.error is not None and not self.events:
                raise self.error
            text = "".join(e.text for e in self.events if isinstance(e, TextDelta))
            sources = next((e.sources for e in self.events if isinstance(e, Retrieved)), ())
            return ChatReply(text, Usage(7, 3), sources)

        def stream(job):
            self.jobs.append(job)
            self.streams.append(Stream(self.events, self.error))
            return self.streams[-1]

        self.chat = Method(chat)
        self.stream = Method(stream)

    def options(self, **_):
        return self


class _Documents:
    def __init__(self):
        async def store(tenant, data, name=None):
            assert data.startswith(b"%PDF-")
            return {"id": "d" * 32, "chunks": 3, "pages": 2, "characters": 1234, "name": name, "size": len(data)}

        async def get(tenant, doc):
            found = {"id": doc, "name": "a.pdf", "size": 9, "chunks": 3, "pages": 2, "created": "2025-01-31T12:00:00Z"}
            return found if (tenant, doc) == ("tenant-a", "d" * 32) else None

        async def delete(tenant, doc):
            return (tenant, doc) == ("tenant-a", "d" * 32)

        self.store, self.get, self.delete = Method(store), Method(get), Method(delete)


class _Family:
    async def run(self, family, gpu, job, timeout):
        return Result(outputs=[Output(key=f"tenants/{job.tenant}/audio/{job.request_id}/0.wav",
                                      content_type="audio/wav")], meta={"duration_seconds": 1.5, "format": "wav"})


def _client(chat=None, documents=None) -> TestClient:
    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    root = Path(tempfile.mkdtemp(prefix="studio-chat-"))
    studio = Studio(
        registry=Registry(ServiceConfig.model_validate({**args, "models_dir": str(root)})),
        keys=KeyRing({"sk-chat-test": "tenant-a"}), dispatcher=_Family(),
        store=LocalObjectStore(root, "http://testserver", b"chat-test-secret"), settings=IngressSettings(),
        url_expiry_seconds=3600, chat=chat, documents=documents,
    )
    return TestClient(create_api(studio))


BODY = {"llm": "OpenAI", "llm_model": "gpt-4o-mini", "history": [{"role": "user", "content": "penguins?"}]}
EVENTS = [Retrieved((SOURCE,)), TextDelta("echo: "), TextDelta("penguins?"), Usage(7, 3)]


def test_chat_answers_the_envelope_with_usage_and_sources():
    chat = _Chat(EVENTS)
    r = _client(chat).post(f"{PREFIX}/chat", headers=AUTH, json=BODY)
    assert r.status_code == 200, r.text
    env = r.json()
    assert env["output"] == "echo: penguins?" and (env["promptTokens"], env["completionTokens"]) == (7, 3)
    assert env["status"] == "SUCCESS" and env["meta"]["llm_model"] == "gpt-4o-mini"
    assert env["meta"]["sources"] == [{"kind": "document", "text": "Penguins nest on rock.", "score": 0.8,
                                       "document_id": "doc1", "chunk": 0, "page": 2}]
    assert env["input"]["history"] == BODY["history"] and chat.jobs[0].tenant == "tenant-a"


def test_stream_chat_is_ndjson_exactly():
    r = _client(_Chat(EVENTS)).post(f"{PREFIX}/streamChat", headers=AUTH, json=BODY)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[:2] == [{"output": "echo: "}, {"output": "penguins?"}]
    assert lines[2] == {"output": None, "promptTokens": 7, "completionTokens": 3,
                        "sources": [{"kind": "document", "text": "Penguins nest on rock.", "score": 0.8,
                                     "document_id": "doc1", "chunk": 0, "page": 2}]}
    assert len(lines) == 3 and r.text.endswith("\n")


def test_an_error_before_the_first_piece_keeps_its_status():
    chat = _Chat(error=VendorError("OpenAI", "rate_limited", "", 9))
    r = _client(chat).post(f"{PREFIX}/streamChat", headers=AUTH, json=BODY)
    assert r.status_code == 429 and r.headers["retry-after"] == "9" and r.json()["error"] == "VendorRateLimited"
    assert chat.streams[0].cancelled


def test_an_error_after_the_first_piece_is_the_last_line():
    chat = _Chat([TextDelta("echo: ")], error=VendorError("OpenAI", "unavailable", "", None))
    r = _client(chat).post(f"{PREFIX}/streamChat", headers=AUTH, json=BODY)
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert r.status_code == 200 and lines[0] == {"output": "echo: "}
    assert lines[-1]["output"] is None and lines[-1]["error"] == "VendorUnavailable"
    assert "OpenAI is unavailable" in lines[-1]["error_data"] and chat.streams[0].cancelled


def test_another_tenants_document_in_a_chat_is_404():
    chat = _Chat(error=DocumentNotFound("pdf_references[0]"))
    body = {**BODY, "enable_tool": True, "tools": {"tool_name": "QdrantDB", "tool_type": "DBSearch",
                                                   "pdf_references": ["e" * 32]}}
    r = _client(chat, _Documents()).post(f"{PREFIX}/chat", headers=AUTH, json=body)
    assert r.status_code == 404 and r.json()["error_data"] == "pdf_references[0]: no such document"
    assert chat.jobs[0].documents == ("e" * 32,)


def test_without_the_services_the_routes_are_404_and_db_search_422():
    client = _client()
    assert client.post(f"{PREFIX}/chat", headers=AUTH, json=BODY).status_code == 404
    assert client.post(f"{PREFIX}/pdfVectorStore", headers=AUTH, json={"url": "https://e.com/a.pdf"}).status_code == 404
    body = {**BODY, "tools": {"tool_name": "QdrantDB", "tool_type": "DBSearch", "pdf_references": ["e" * 32]}}
    r = _client(_Chat(EVENTS)).post(f"{PREFIX}/chat", headers=AUTH, json=body)
    assert r.status_code == 422 and "document search is not enabled" in r.json()["error_data"]


def _pdf_uri(data: bytes) -> str:
    return "data:application/pdf;base64," + base64.b64encode(data).decode()


def test_document_routes():
    client = _client(_Chat(), _Documents())
    r = client.post(f"{PREFIX}/pdfVectorStore", headers=AUTH, json={"url": _pdf_uri(b"%PDF-1.7 ...")})
    assert r.status_code == 200 and r.json()["output"] == {"id": "d" * 32, "chunks": 3}
    assert r.json()["input"] == {"url": "data:application/pdf;base64,...", "name": None}
    assert r.json()["meta"]["pages"] == 2 and r.json()["meta"]["name"] == "document.pdf"
    r = client.post(f"{PREFIX}/pdfVectorStore", headers=AUTH, json={"url": _pdf_uri(b"GIF89a...")})
    assert r.status_code == 422 and r.json()["error_data"].startswith("url: the document is not a PDF")
    r = client.post(f"{PREFIX}/pdfVectorStore", headers=AUTH, json={"url": "http://127.0.0.1:9/a.pdf"})
    assert r.status_code == 422 and "url" in r.json()["error_data"]
    r = client.post(f"{PREFIX}/pdfVectorStore", headers=AUTH, json={"url": "file:///etc/passwd"})
    assert r.status_code == 422 and r.json()["error_data"].startswith("url:")
    assert client.post(f"{PREFIX}/getDocument", headers=AUTH, json={"id": "d" * 32}).json()["output"]["chunks"] == 3
    unknown = client.post(f"{PREFIX}/getDocument", headers=AUTH, json={"id": "f" * 32})
    assert unknown.status_code == 404 and unknown.json()["error"] == "NotFound"
    gone = client.post(f"{PREFIX}/deleteDocument", headers=AUTH, json={"id": "f" * 32})  # idempotent: not a 404
    assert gone.status_code == 200 and gone.json()["output"] == {"id": "f" * 32, "deleted": False}
    assert client.post(f"{PREFIX}/deleteDocument", headers=AUTH, json={"id": "d" * 32}).json()["output"]["deleted"]
    r = client.post(f"{PREFIX}/getDocument", headers=AUTH, json={"id": "../../etc"})
    assert r.status_code == 422 and r.json()["error_data"].startswith("id:")


@pytest.mark.parametrize(("params", "field"), [
    ({"style": 0.5}, "audio_parameters.style"), ({"similarity_boost": 0.1}, "audio_parameters.similarity_boost"),
    ({"use_speaker_boost": False}, "audio_parameters.use_speaker_boost"), ({"stability": 1.5}, "audio_parameters.stability"),
])
def test_text_to_speech_refuses_what_a_local_voice_cannot_do(params, field):
    r = _client().post(f"{PREFIX}/getTextToSpeech", headers=AUTH,
                       json={"app_id": "ap-text-to-speech", "prompt": "hello there world", "audio_parameters": params})
    assert r.status_code == 422 and r.json()["error_data"].startswith(field), r.text


def test_text_to_speech_answers_one_url():
    client = _client()
    r = client.post(f"{PREFIX}/getTextToSpeech", headers=AUTH, json={
        "app_id": "ap-text-to-speech", "prompt": "hello there world", "audio_parameters": {
            "voice_id": "21m00Tcm4TlvDq8ikWAM", "stability": 0.5, "similarity_boost": 0.75, "style": None,
            "use_speaker_boost": True}})
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["output"], str) and "/audio/" in r.json()["output"]
    assert r.json()["meta"]["duration_seconds"] == 1.5
    r = client.post(f"{PREFIX}/getTextToSpeech", headers=AUTH, json={"app_id": "ap-sd15-txt2img", "prompt": "hello world!"})
    assert r.status_code == 422 and "call getTextToImage instead" in r.json()["error_data"]
    r = client.post(f"{PREFIX}/getTextToImage", headers=AUTH, json={"app_id": "ap-text-to-speech"})
    assert r.status_code == 422 and "call getTextToSpeech instead" in r.json()["error_data"]


def test_a_provider_failing_after_the_tools_ran_keeps_its_status():
    """The passages come first; they are held until the provider's first piece, so its 429 stays a 429."""
    chat = _Chat([Retrieved((SOURCE,))], error=VendorError("OpenAI", "rate_limited", "", 4))
    r = _client(chat).post(f"{PREFIX}/streamChat", headers=AUTH, json=BODY)
    assert r.status_code == 429 and r.headers["retry-after"] == "4" and chat.streams[0].cancelled
