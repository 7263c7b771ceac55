"""Build the configured object store."""

from __future__ import annotations

import logging

from storage.base import ObjectStore
from storage.settings import StorageSettings

log = logging.getLogger(__name__)


def open_store(settings: StorageSettings | None = None, *, signing: bool = True) -> ObjectStore:
    """Open the local or S3 store described by ``settings`` (default: from the environment).

    ``signing=False``: a store that only reads and writes objects (a family replica);
    the local backend then neither needs nor creates a URL-signing secret."""
    settings = settings if settings is not None else StorageSettings()
    if settings.backend == "s3":
        from storage.s3 import S3ObjectStore

        store = S3ObjectStore(settings)
        if settings.s3_create_bucket:
            store.ensure_bucket()
        return store

    from storage.local import SECRET_FILENAME, LocalObjectStore, load_or_create_secret

    root = settings.local_root
    root.mkdir(parents=True, exist_ok=True)
    if settings.signing_secret is not None:
        secret = settings.signing_secret.get_secret_value().encode()
    elif signing:
        secret = load_or_create_secret(root / SECRET_FILENAME)
    else:
        secret = None
    log.debug("local object store at %s", root)
    return LocalObjectStore(root, settings.public_base_url, secret)
