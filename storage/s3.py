"""S3 (or S3-compatible) object store on boto3, with presigned download URLs."""

from __future__ import annotations

import logging
import threading
from typing import Any

from storage.base import ObjectInfo, ObjectNotFound, PreconditionFailed
from storage.keys import validate_key
from storage.settings import MAX_URL_EXPIRY_SECONDS, StorageSettings

log = logging.getLogger(__name__)

_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
_NO_BUCKET_CODES = {"NoSuchBucket", "NotFound", "404"}
_PRECONDITION_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


_TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "Throttling", "ThrottlingException", "InternalError",
                    "ServiceUnavailable", "RequestTimeTooSkewed"}


def is_transient_s3(exc: BaseException) -> bool:
    """A boto3 failure that may pass: a 5xx or throttling answer, or no answer at all."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return status >= 500 or status == 429 or _error_code(exc) in _TRANSIENT_CODES
    return isinstance(exc, BotoCoreError)  # endpoint unreachable, timeouts, dropped connections


class S3ObjectStore:
    """An ``ObjectStore`` on one S3 bucket.

    boto3 clients are not picklable, so they are built lazily in the process
    that uses the store and dropped when it is pickled (e.g. sent to a Ray actor).
    """

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self._lock = threading.Lock()
        self._client: Any = None
        self._presign_client: Any = None

    def __repr__(self) -> str:
        return f"S3ObjectStore(endpoint={self.settings.s3_endpoint_url!r}, bucket={self.bucket!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"])  # type: ignore[misc]

    def _make_client(self, endpoint_url: str | None) -> Any:
        import boto3
        from botocore.config import Config

        s = self.settings
        config = Config(
            signature_version="s3v4",
            region_name=s.s3_region,
            s3={"addressing_style": s.s3_addressing_style},
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 5, "mode": "standard"},
        )
        session = boto3.session.Session()
        return session.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=s.s3_region,
            aws_access_key_id=s.s3_access_key_id.get_secret_value() if s.s3_access_key_id else None,
            aws_secret_access_key=(
                s.s3_secret_access_key.get_secret_value() if s.s3_secret_access_key else None
            ),
            config=config,
        )

    @property
    def client(self) -> Any:
        """The boto3 client for API calls (built on first use)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client(self.settings.s3_endpoint_url)
        return self._client

    @property
    def presign_client(self) -> Any:
        """The client that signs URLs, pointed at ``s3_public_endpoint_url``."""
        public = self.settings.s3_public_endpoint_url
        if public == self.settings.s3_endpoint_url:
            return self.client
        if self._presign_client is None:
            with self._lock:
                if self._presign_client is None:
                    self._presign_client = self._make_client(public)
        return self._presign_client

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` under ``key``, replacing what was there."""
        validate_key(key)
        self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(data), ContentType=content_type)
        log.debug("put s3://%s/%s (%d bytes, %s)", self.bucket, key, len(data), content_type)

    def get(self, key: str) -> bytes:
        """Return the bytes under ``key``; raise ``ObjectNotFound`` if absent."""
        return self.get_versioned(key)[0]

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The bytes under ``key`` and their ETag (quotes stripped)."""
        from botocore.exceptions import ClientError

        validate_key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES:
                raise ObjectNotFound(key) from None
            raise
        with response["Body"] as body:
            return body.read(), response["ETag"].strip('"')

    def put_if(
        self, key: str, data: bytes, content_type: str = "application/json", *,
        if_match: str | None = None, if_absent: bool = False,
    ) -> str:
        """S3 conditional write (``If-Match`` / ``If-None-Match: *``)."""
        from botocore.exceptions import ClientError

        validate_key(key)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": bytes(data), "ContentType": content_type}
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = f'"{if_match}"'
        try:
            response = self.client.put_object(**kwargs)
        except ClientError as exc:
            if _error_code(exc) in _PRECONDITION_CODES or _error_code(exc) in _NOT_FOUND_CODES:
                raise PreconditionFailed(key) from None
            raise
        return response["ETag"].strip('"')

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Objects under ``prefix`` (paginated ListObjectsV2)."""
        paginator = self.client.get_paginator("list_objects_v2")
        found = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                found.append(ObjectInfo(obj["Key"], int(obj["Size"]), obj["LastModified"].timestamp()))
        return found

    def _head(self, key: str) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        validate_key(key)
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES:
                raise ObjectNotFound(key) from None
            raise

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        try:
            self._head(key)
        except ObjectNotFound:
            return False
        return True

    def content_type(self, key: str) -> str:
        """The stored Content-Type; raise ``ObjectNotFound`` if absent."""
        return str(self._head(key).get("ContentType") or "application/octet-stream")

    def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are not an error."""
        validate_key(key)
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def url(self, key: str, expires_in: int) -> str:
        """A presigned GET URL (on the public endpoint) valid for ``expires_in`` seconds."""
        validate_key(key)
        if not 1 <= expires_in <= MAX_URL_EXPIRY_SECONDS:
            raise ValueError(f"expires_in must be within 1..{MAX_URL_EXPIRY_SECONDS} seconds")
        return self.presign_client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=int(expires_in)
        )

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (idempotent, tolerates races)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in _NO_BUCKET_CODES:
                raise
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.settings.s3_region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.s3_region}
        try:
            self.client.create_bucket(**kwargs)
            log.info("created bucket %s", self.bucket)
        except ClientError as exc:
            if _error_code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise
