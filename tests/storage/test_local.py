"""Tests for the filesystem object store and its signed URLs."""

from __future__ import annotations

import os
import pickle
import stat
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from storage.base import ObjectNotFound, ObjectStore
from storage.factory import open_store
from storage.local import (
    FILES_ROUTE,
    SECRET_FILENAME,
    LocalObjectStore,
    load_or_create_secret,
)
from storage.settings import StorageSettings

BASE = "http://studio.test:8000"


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects", BASE, b"s3cret")


def _parse(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == BASE
    assert parts.path.startswith(FILES_ROUTE + "/")
    query = parse_qs(parts.query)
    return unquote(parts.path[len(FILES_ROUTE) + 1 :]), query["expires"][0], query["signature"][0]


def test_is_an_object_store(store: LocalObjectStore) -> None:
    assert isinstance(store, ObjectStore)


def test_round_trip_and_content_type(store: LocalObjectStore) -> None:
    store.put("tenants/a/images/r/0.png", b"\x89PNG data", "image/png")
    assert store.get("tenants/a/images/r/0.png") == b"\x89PNG data"
    assert store.content_type("tenants/a/images/r/0.png") == "image/png"
    assert store.exists("tenants/a/images/r/0.png")


def test_default_content_type(store: LocalObjectStore) -> None:
    store.put("k", b"x")
    assert store.content_type("k") == "application/octet-stream"


def test_overwrite_replaces_data_and_type(store: LocalObjectStore) -> None:
    store.put("k/v", b"one", "text/plain")
    store.put("k/v", b"two!", "image/jpeg")
    assert store.get("k/v") == b"two!"
    assert store.content_type("k/v") == "image/jpeg"


def test_no_temp_files_left(store: LocalObjectStore) -> None:
    store.put("a/b", b"x", "text/plain")
    store.put("a/b", b"y", "text/plain")
    names = [p.name for p in store.root.rglob("*") if p.is_file()]
    assert sorted(names) == ["b", "b.json"]


def test_missing_key(store: LocalObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("nope")
    with pytest.raises(KeyError):  # ObjectNotFound is a KeyError
        store.get("no/such/key")
    with pytest.raises(ObjectNotFound):
        store.content_type("nope")
    assert not store.exists("nope")


def test_delete(store: LocalObjectStore) -> None:
    store.put("d/x", b"x", "text/plain")
    store.delete("d/x")
    with pytest.raises(ObjectNotFound):
        store.get("d/x")
    store.delete("d/x")  # absent: no error
    store.delete("never/existed")


def test_directory_is_not_an_object(store: LocalObjectStore) -> None:
    store.put("dir/file", b"x")
    with pytest.raises(ObjectNotFound):
        store.get("dir")


BAD_KEYS = [
    "",
    "/etc/passwd",
    "../outside",
    "a/../../outside",
    "a/..",
    "./a",
    "a//b",
    "a/",
    "a\\..\\b",
    "a\x00b",
    "a b",
    "a?b",
    "%2e%2e/x",
    "é",
    "x" * 1025,
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_key_validation(store: LocalObjectStore, key: str) -> None:
    for call in (
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.delete(key),
        lambda: store.content_type(key),
        lambda: store.exists(key),
        lambda: store.url(key, 60),
    ):
        with pytest.raises(ValueError):
            call()
    assert store.verify(key, int(time.time()) + 60, "0" * 64) is False


def test_traversal_writes_nothing_outside_root(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "root", BASE, b"k")
    for key in ("../escaped", "a/../../escaped", "/tmp/escaped"):
        with pytest.raises(ValueError):
            store.put(key, b"x")
    assert list(tmp_path.iterdir()) == []


def test_signed_url_verifies(store: LocalObjectStore) -> None:
    url = store.url("tenants/a/images/r/0.png", 60)
    key, expires, signature = _parse(url)
    assert key == "tenants/a/images/r/0.png"
    assert int(expires) - time.time() == pytest.approx(60, abs=2)
    assert len(signature) == 64
    assert store.verify(key, expires, signature)
    assert store.verify(key, int(expires), signature)


def test_signed_url_expired(store: LocalObjectStore) -> None:
    key, expires, signature = _parse(store.url("k", 1))
    time.sleep(2.1)
    assert not store.verify(key, expires, signature)


def test_signed_url_tampered(store: LocalObjectStore) -> None:
    key, expires, signature = _parse(store.url("tenants/a/x.png", 60))
    assert not store.verify("tenants/b/x.png", expires, signature)  # other key
    assert not store.verify(key, str(int(expires) + 3600), signature)  # extended expiry
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    assert not store.verify(key, expires, flipped)
    assert not store.verify(key, expires, "")
    assert not store.verify(key, expires, signature.upper())
    assert not store.verify(key, "not-a-number", signature)
    assert not store.verify(key, expires, "é" * 64)


def test_signed_url_other_secret(tmp_path: Path, store: LocalObjectStore) -> None:
    other = LocalObjectStore(store.root, BASE, b"another secret")
    key, expires, signature = _parse(store.url("k", 60))
    assert not other.verify(key, expires, signature)


def test_url_rejects_bad_expiry(store: LocalObjectStore) -> None:
    with pytest.raises(ValueError):
        store.url("k", 0)


def test_secret_file_shared_between_instances(tmp_path: Path) -> None:
    settings = StorageSettings(backend="local", local_root=tmp_path / "objs", public_base_url=BASE)
    a = open_store(settings)
    b = open_store(settings)
    assert isinstance(a, LocalObjectStore) and isinstance(b, LocalObjectStore)
    key, expires, signature = _parse(a.url("shared/key", 60))
    assert b.verify(key, expires, signature)
    secret_file = tmp_path / "objs" / SECRET_FILENAME
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert len(secret_file.read_bytes().strip()) >= 32
    assert [p.name for p in secret_file.parent.iterdir() if p.name.startswith(".tmp")] == []


def test_secret_creation_race(tmp_path: Path) -> None:
    path = tmp_path / "race" / SECRET_FILENAME
    results: list[bytes] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(load_or_create_secret(path))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert sorted(os.listdir(path.parent)) == [SECRET_FILENAME]


def test_configured_secret_is_used(tmp_path: Path) -> None:
    settings = StorageSettings(local_root=tmp_path / "o", public_base_url=BASE, signing_secret="abc")
    store = open_store(settings)
    key, expires, signature = _parse(store.url("k", 60))
    assert LocalObjectStore(tmp_path / "x", BASE, b"abc").verify(key, expires, signature)
    assert not (tmp_path / "o" / SECRET_FILENAME).exists()


def test_settings_pickle_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STUDIO_STORAGE_BACKEND", "s3")
    monkeypatch.setenv("STUDIO_STORAGE_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("STUDIO_STORAGE_SIGNING_SECRET", "zzz")
    settings = StorageSettings()
    assert settings.backend == "s3"
    assert settings.s3_public_endpoint_url == "http://127.0.0.1:9"
    clone = pickle.loads(pickle.dumps(settings))
    assert clone == settings
    assert clone.signing_secret is not None and clone.signing_secret.get_secret_value() == "zzz"
    assert "zzz" not in repr(settings)


def test_settings_expiry_bounds() -> None:
    with pytest.raises(ValueError):
        StorageSettings(url_expiry_seconds=0)
    with pytest.raises(ValueError):
        StorageSettings(url_expiry_seconds=7 * 24 * 3600 + 1)


# -- locks: delete takes the key's lock and removes the lock file -------------------


def _lock_files(store: LocalObjectStore) -> list[str]:
    return sorted(p.name for p in (store.root / "locks").iterdir()) if (store.root / "locks").exists() else []


def test_delete_waits_for_a_compare_and_swap_in_flight_and_removes_its_lock(store):
    store.put_if("tenants/t/tasks/x/record.json", b"v1", if_absent=True)
    assert len(_lock_files(store)) == 1
    holder = store._lock("tenants/t/tasks/x/record.json")
    holder.__enter__()
    deleted = threading.Event()
    worker = threading.Thread(target=lambda: (store.delete("tenants/t/tasks/x/record.json"), deleted.set()))
    worker.start()
    assert not deleted.wait(0.3)  # blocked behind the holder
    assert store.exists("tenants/t/tasks/x/record.json")
    holder.__exit__(None, None, None)
    assert deleted.wait(5)
    worker.join()
    assert not store.exists("tenants/t/tasks/x/record.json") and _lock_files(store) == []


def test_concurrent_writers_and_deletes_never_share_a_stale_lock(store):
    key = "tenants/t/counter"
    store.put_if(key, b"0", if_absent=True)
    errors = []

    def bump():
        for _ in range(30):
            try:
                data, etag = store.get_versioned(key)
                store.put_if(key, str(int(data) + 1).encode(), if_match=etag)
            except Exception as exc:  # PreconditionFailed / ObjectNotFound are the expected races
                errors.append(type(exc).__name__)

    def churn():
        for _ in range(30):
            store.delete(key)
            try:
                store.put_if(key, b"0", if_absent=True)
            except Exception as exc:
                errors.append(type(exc).__name__)

    threads = [threading.Thread(target=bump) for _ in range(3)] + [threading.Thread(target=churn)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(errors) <= {"PreconditionFailed", "ObjectNotFound"}
    assert len(_lock_files(store)) <= 1


def test_prune_locks_removes_only_old_unheld_lock_files(store):
    for key in ("a/1", "a/2"):
        store.put_if(key, b"x", if_absent=True)
    names = _lock_files(store)
    old = time.time() - 7200
    for name in names:
        os.utime(store.root / "locks" / name, (old, old))
    held = store._lock("a/1")
    held.__enter__()
    try:
        assert store.prune_locks(3600) == 1
    finally:
        held.__exit__(None, None, None)
    assert len(_lock_files(store)) == 1
    store.put_if("a/2", b"y", if_match=store.get_versioned("a/2")[1])  # still works: a new lock file
