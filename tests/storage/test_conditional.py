"""Conditional writes and listing, the same on the local store and on S3 (SeaweedFS)."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from storage.base import ObjectNotFound, PreconditionFailed
from storage.factory import open_store
from storage.settings import StorageSettings


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(StorageSettings(backend="local", local_root=tmp_path / "objects"))
    return open_store(request.getfixturevalue("seaweed_s3").storage_settings())


def test_if_absent_creates_once(store):
    etag = store.put_if("q/a.json", b"1", if_absent=True)
    assert store.get_versioned("q/a.json") == (b"1", etag)
    with pytest.raises(PreconditionFailed):
        store.put_if("q/a.json", b"2", if_absent=True)
    assert store.get("q/a.json") == b"1"


def test_if_match_is_compare_and_swap(store):
    first = store.put_if("q/b.json", b"v1", if_absent=True)
    second = store.put_if("q/b.json", b"v2", if_match=first)
    with pytest.raises(PreconditionFailed):
        store.put_if("q/b.json", b"v3", if_match=first)
    assert store.get_versioned("q/b.json") == (b"v2", second)
    with pytest.raises(PreconditionFailed):
        store.put_if("q/missing.json", b"x", if_match=first)


def test_concurrent_increments_lose_nothing(store):
    store.put_if("q/n.json", b"0", if_absent=True)

    def bump(_):
        while True:
            data, etag = store.get_versioned("q/n.json")
            try:
                store.put_if("q/n.json", str(int(data) + 1).encode(), if_match=etag)
                return
            except PreconditionFailed:
                continue

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(bump, range(30)))
    assert store.get("q/n.json") == b"30"


def test_list_by_prefix(store):
    for key in ("l/x/1.json", "l/x/2.json", "l/y/3.json"):
        store.put(key, b"{}", "application/json")
    assert [o.key for o in store.list("l/x/")] == ["l/x/1.json", "l/x/2.json"]
    assert len(store.list("l/")) == 3 and store.list("nothing/") == []
    info = store.list("l/y/")[0]
    assert info.size == 2 and info.last_modified > 0


def test_get_versioned_missing(store):
    with pytest.raises(ObjectNotFound):
        store.get_versioned("q/none.json")
