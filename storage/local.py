"""Filesystem object store with HMAC-signed download URLs served by our own file route."""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from storage.base import ObjectInfo, ObjectNotFound, PreconditionFailed
from storage.keys import validate_key

log = logging.getLogger(__name__)

FILES_ROUTE = "/api/v1/studio/files"
SECRET_FILENAME = ".signing-secret"
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_or_create_secret(path: Path) -> bytes:
    """Read the signing secret at ``path``, creating it (0600) if absent.

    Race-safe: the secret is fully written to a private temp file and then
    ``os.link``-ed into place, which fails if another process won; the loser
    reads the winner's secret. Every process on the machine ends up agreeing.
    """
    path = Path(path)
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-secret-", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_hex(32).encode())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
                log.info("created signing secret %s", path)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
        secret = path.read_bytes()
    if not secret.strip():
        raise RuntimeError(f"signing secret file {path} is empty")
    return secret.strip()


class LocalObjectStore:
    """Objects under ``<root>/data/<key>``, their content types under ``<root>/meta/<key>.json``.

    ``url()`` points at ``<public_base_url>/api/v1/studio/files/<key>`` with an
    expiry and an HMAC-SHA256 signature that ``verify()`` checks.
    """

    def __init__(self, root: str | os.PathLike[str], public_base_url: str, secret: bytes | None) -> None:
        """``secret`` None: a store that cannot sign or verify URLs (it only stores objects)."""
        if secret is not None and not secret:
            raise ValueError("signing secret must not be empty")
        self.root = Path(root).resolve()
        self.public_base_url = public_base_url.rstrip("/")
        self._secret = bytes(secret) if secret is not None else None
        self._data = self.root / "data"
        self._meta = self.root / "meta"
        self._locks = self.root / "locks"

    def __repr__(self) -> str:
        return f"LocalObjectStore(root={str(self.root)!r}, public_base_url={self.public_base_url!r})"

    def _paths(self, key: str) -> tuple[Path, Path]:
        validate_key(key)
        data = self._data.joinpath(*key.split("/"))
        meta = self._meta.joinpath(*key.split("/")).with_name(data.name + ".json")
        # Belt and braces: validate_key already rules out escapes.
        if not data.is_relative_to(self._data) or not meta.is_relative_to(self._meta):
            raise ValueError(f"object key escapes the store root: {key!r}")
        return data, meta

    def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        """Store ``data`` under ``key`` atomically, replacing what was there."""
        data_path, meta_path = self._paths(key)
        _write_atomic(meta_path, json.dumps({"content_type": content_type}).encode())
        _write_atomic(data_path, bytes(data))
        log.debug("put %s (%d bytes, %s)", key, len(data), content_type)

    def _lock(self, key: str):
        """An exclusive cross-process lock for ``key`` (flock on a lock file)."""
        self._locks.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        return _FileLock(self._locks / name)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The bytes under ``key`` and their ETag (MD5 hex, as S3 gives for single-part objects)."""
        data = self.get(key)
        return data, hashlib.md5(data).hexdigest()

    def put_if(
        self, key: str, data: bytes, content_type: str = "application/json", *,
        if_match: str | None = None, if_absent: bool = False,
    ) -> str:
        """Compare-and-swap under a per-key file lock; see ``ObjectStore.put_if``."""
        data_path, meta_path = self._paths(key)
        with self._lock(key):
            try:
                current = data_path.read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                current = None
            if if_absent and current is not None:
                raise PreconditionFailed(key)
            if if_match is not None and (current is None or hashlib.md5(current).hexdigest() != if_match):
                raise PreconditionFailed(key)
            _write_atomic(meta_path, json.dumps({"content_type": content_type}).encode())
            _write_atomic(data_path, bytes(data))
        return hashlib.md5(data).hexdigest()

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Objects under a folder-like ``prefix`` (``""`` for all)."""
        base = self._data.joinpath(*[p for p in prefix.split("/") if p])
        if prefix and not prefix.endswith("/"):
            raise ValueError("list() takes a folder-like prefix ending in '/'")
        if not base.is_dir():
            return []
        found = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                found.append(ObjectInfo(path.relative_to(self._data).as_posix(), st.st_size, st.st_mtime))
        return sorted(found, key=lambda o: o.key)

    def get(self, key: str) -> bytes:
        """Return the bytes under ``key``; raise ``ObjectNotFound`` if absent."""
        data_path, _ = self._paths(key)
        try:
            return data_path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        return self._paths(key)[0].is_file()

    def content_type(self, key: str) -> str:
        """The content type given at ``put``; raise ``ObjectNotFound`` if absent."""
        data_path, meta_path = self._paths(key)
        if not data_path.is_file():
            raise ObjectNotFound(key)
        try:
            return str(json.loads(meta_path.read_bytes())["content_type"])
        except (OSError, ValueError, KeyError, TypeError):
            return DEFAULT_CONTENT_TYPE

    def delete(self, key: str) -> None:
        """Remove ``key`` (absent keys are not an error) under its lock, and the lock file too:
        a compare-and-swap in flight finishes first, and no lock file outlives its object."""
        paths = self._paths(key)
        with self._lock(key) as lock:
            for path in paths:
                try:
                    path.unlink()
                except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                    pass
            lock.unlink()

    def prune_locks(self, older_than_seconds: float) -> int:
        """Delete lock files unused for ``older_than_seconds`` that nobody holds (left by
        keys written with ``put_if`` and never deleted, or by a crash). Returns how many."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        try:
            entries = list(os.scandir(self._locks))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.stat().st_mtime >= cutoff:
                    continue
            except FileNotFoundError:
                continue
            lock = _FileLock(Path(entry.path))
            if lock.try_acquire():
                lock.unlink()
                lock.release()
                removed += 1
        return removed

    def _signature(self, key: str, expires: int) -> str:
        if self._secret is None:
            raise RuntimeError("this store was opened without a signing secret")
        msg = f"{key}\n{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def url(self, key: str, expires_in: int) -> str:
        """A signed URL to our file route, valid for ``expires_in`` seconds."""
        validate_key(key)
        if expires_in < 1:
            raise ValueError("expires_in must be at least 1 second")
        expires = int(time.time()) + int(expires_in)
        return (
            f"{self.public_base_url}{FILES_ROUTE}/{quote(key)}"
            f"?expires={expires}&signature={self._signature(key, expires)}"
        )

    def verify(self, key: str, expires: int | str, signature: str) -> bool:
        """True if ``signature`` is ours for ``key`` and ``expires`` has not passed (constant time)."""
        try:
            validate_key(key)
            expires_at = int(expires)
        except (ValueError, TypeError):
            return False
        if not isinstance(signature, str):
            return False
        expected = self._signature(key, expires_at)
        ok = hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))
        return ok and time.time() <= expires_at


class _FileLock:
    """``flock`` on a lock file that may be unlinked by its holder.

    After taking the lock, the holder checks that the path still names the file it
    locked; if the file was unlinked (and perhaps re-created) meanwhile, it tries again
    on the current one. So a holder may delete the lock file (``unlink``) safely.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def _take(self, flags: int, create: bool) -> bool:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
            except FileNotFoundError:
                return False
            try:
                fcntl.flock(fd, flags)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)  # unlinked under us: lock the file that is there now
            if not create:
                return False

    def __enter__(self) -> _FileLock:
        self._take(fcntl.LOCK_EX, create=True)
        return self

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it (never creates the file)."""
        return self._take(fcntl.LOCK_EX | fcntl.LOCK_NB, create=False)

    def unlink(self) -> None:
        """Remove the lock file; only while holding it."""
        assert self._fd is not None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __exit__(self, *exc: object) -> None:
        self.release()
