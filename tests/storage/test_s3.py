"""Tests for the S3 store against a real SeaweedFS server on 127.0.0.1."""

from __future__ import annotations

import pickle
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest

from storage.base import ObjectNotFound, ObjectStore
from storage.factory import open_store
from storage.s3 import S3ObjectStore
from tests.support.seaweed import SeaweedS3


@pytest.fixture
def store(seaweed_s3: SeaweedS3) -> S3ObjectStore:
    store = open_store(seaweed_s3.storage_settings())
    assert isinstance(store, S3ObjectStore)
    return store


def _download(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def test_open_store_returns_s3_store(store: S3ObjectStore) -> None:
    assert isinstance(store, ObjectStore)


def test_round_trip_with_content_type(store: S3ObjectStore) -> None:
    key = "tenants/acme/images/r1/0.png"
    store.put(key, b"\x89PNG\r\n fake", "image/png")
    assert store.get(key) == b"\x89PNG\r\n fake"
    assert store.content_type(key) == "image/png"
    assert store.exists(key)
    store.put(key, b"second", "image/webp")
    assert store.get(key) == b"second"
    assert store.content_type(key) == "image/webp"


def test_missing_key(store: S3ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("no/such/key.png")
    with pytest.raises(ObjectNotFound):
        store.content_type("no/such/key.png")
    assert not store.exists("no/such/key.png")


def test_delete(store: S3ObjectStore) -> None:
    store.put("d/x.bin", b"x")
    store.delete("d/x.bin")
    with pytest.raises(ObjectNotFound):
        store.get("d/x.bin")
    store.delete("d/x.bin")  # absent: no error


def test_key_validation(store: S3ObjectStore) -> None:
    for key in ("", "../x", "/abs", "a//b", "a\\b", "a b"):
        with pytest.raises(ValueError):
            store.put(key, b"x")
        with pytest.raises(ValueError):
            store.url(key, 60)


def test_presigned_url_downloads(store: S3ObjectStore, seaweed_s3: SeaweedS3) -> None:
    store.put("tenants/acme/images/r2/0.png", b"png bytes", "image/png")
    url = store.url("tenants/acme/images/r2/0.png", 60)
    assert url.startswith(seaweed_s3.endpoint_url + "/")
    status, body, content_type = _download(url)
    assert (status, body, content_type) == (200, b"png bytes", "image/png")


def test_presigned_url_needs_signature(store: S3ObjectStore) -> None:
    store.put("private.txt", b"secret", "text/plain")
    url = store.url("private.txt", 60)
    status, body, _ = _download(url.split("?", 1)[0])
    assert status in (401, 403) and body != b"secret"
    tampered = url.replace("private.txt", "privatf.txt")
    assert _download(tampered)[0] in (401, 403)


def test_presigned_url_expires(store: S3ObjectStore) -> None:
    store.put("soon-gone.txt", b"bye", "text/plain")
    url = store.url("soon-gone.txt", 1)
    time.sleep(2.1)
    status, body, _ = _download(url)
    assert status == 403 and body != b"bye"


def test_public_endpoint_used_for_urls(seaweed_s3: SeaweedS3) -> None:
    settings = seaweed_s3.storage_settings(s3_public_endpoint_url="http://files.example.test:9000")
    store = open_store(settings)
    store.put("k.txt", b"x", "text/plain")  # API calls still go to the real endpoint
    url = store.url("k.txt", 60)
    parts = urlsplit(url)
    assert parts.netloc == "files.example.test:9000"
    assert parts.path == f"/{settings.s3_bucket}/k.txt"


def test_ensure_bucket_idempotent(seaweed_s3: SeaweedS3) -> None:
    settings = seaweed_s3.storage_settings(s3_create_bucket=False)
    store = S3ObjectStore(settings)
    names = lambda: {b["Name"] for b in seaweed_s3.client().list_buckets()["Buckets"]}  # noqa: E731
    assert settings.s3_bucket not in names()
    store.ensure_bucket()
    store.ensure_bucket()
    assert settings.s3_bucket in names()
    store.put("a", b"1")
    store.ensure_bucket()
    assert store.get("a") == b"1"


def test_store_is_picklable(store: S3ObjectStore) -> None:
    store.put("p.txt", b"pickled", "text/plain")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get("p.txt") == b"pickled"
    assert clone.settings == store.settings


def test_racing_idempotent_creates_on_s3_make_one_task(store: S3ObjectStore) -> None:
    """Conditional creates racing on a real S3 server: a loser may see 412 or 409 (the winner's
    write still in progress); either way it answers with the winner's binding and record."""
    from concurrent.futures import ThreadPoolExecutor

    from storage.tasks import TaskRecord, TaskStore, new_task_id

    tasks = TaskStore(store)
    ids = [new_task_id() for _ in range(8)]

    def submit(i: int) -> str:
        bound = tasks.claim_idempotency_key("acme", "race", "digest", ids[i])
        task_id = bound["task_id"] if bound else ids[i]
        record = TaskRecord(task_id=task_id, tenant="acme", app_id="ap", route="getTextToImage", family="sd15", deployment="sd15-a10g",
                            gpu="a10g", deadline_at=2e9)
        stored, _ = tasks.create(record, {"n": i}, {"image": bytes([i]) * 64})
        return stored.task_id

    with ThreadPoolExecutor(8) as pool:
        answered = list(pool.map(submit, range(8)))
    assert len(set(answered)) == 1
    task_id = answered[0]
    record = tasks.get("acme", task_id)
    assert [q[0] for _, q in tasks.queued()] == [task_id]
    keys = [o.key for o in store.list(f"tenants/acme/tasks/{task_id}/")]
    assert sorted(keys) == sorted([f"tenants/acme/tasks/{task_id}/record.json", record.payload_key,
                                   tasks.payload(record)["inputs"]["image"]])
