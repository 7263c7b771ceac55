"""A thin HTTP client for the studio API: requests, retries on 429/503, downloads.

Knows the wire format (base path, bearer auth, the JSON envelope) and nothing about
the command line. Errors are raised as :class:`ApiError` (the server answered with
an error) or :class:`TransportError` (it could not be reached, or did not answer JSON).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from time import sleep
from typing import Any, Self
from urllib.parse import urljoin

import httpx

PREFIX = "/api/v1/studio"
TERMINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
RETRY_STATUSES = frozenset({429, 503})
MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024


class ApiError(Exception):
    """The server answered with an HTTP error; ``envelope`` is its JSON body (or a stand-in)."""

    def __init__(self, status_code: int, envelope: dict[str, Any]):
        self.status_code = status_code
        self.envelope = envelope
        self.error = envelope.get("error") or f"HTTP {status_code}"
        self.error_data = envelope.get("error_data") or ""
        super().__init__(f"{self.error}: {self.error_data}" if self.error_data else self.error)


class TransportError(Exception):
    """No usable answer: connection refused, timed out, or a body that is not what was expected."""


def retry_after_seconds(value: str | None, default: float = 1.0) -> float:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return default
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0.0, when.timestamp() - time.time())


def decode_data_uri(uri: str) -> bytes:
    """The bytes of a ``data:<type>;base64,<payload>`` URI."""
    header, comma, payload = uri.partition(",")
    if not comma or not header.endswith(";base64"):
        raise TransportError("output is a data: URI that is not base64-encoded")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise TransportError("output is a data: URI with invalid base64") from None


class StudioClient:
    """Calls one studio deployment at ``base_url`` with one API key.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000`` (the ``/api/v1/studio`` prefix is added).
        key: the API key, sent as ``Authorization: Bearer``; never sent to download URLs.
        timeout: seconds per HTTP request.
        retries: how many times a 429/503 answer is retried after its ``Retry-After``.
        max_wait: cap, in seconds, on a single ``Retry-After`` wait.
        on_wait: called with (seconds, error) before each such wait (for messages).
    """

    def __init__(
        self,
        base_url: str,
        key: str | None,
        timeout: float = 300.0,
        retries: int = 5,
        max_wait: float = 60.0,
        on_wait: Callable[[float, ApiError], None] | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.api_url = self.base_url + PREFIX + "/"
        self.retries = retries
        self.max_wait = max_wait
        self.on_wait = on_wait
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(timeout=timeout, headers=headers, follow_redirects=False)
        self._download = httpx.Client(timeout=timeout, follow_redirects=True)

    def close(self) -> None:
        self._http.close()
        self._download.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def pause(seconds: float) -> None:
        """Sleep (module-level ``sleep``, so tests can replace it)."""
        sleep(seconds)

    # --- routes ---------------------------------------------------------------

    def apps(self) -> list[dict[str, Any]]:
        body = self._call("GET", "apps")
        apps = body.get("apps")
        if not isinstance(apps, list):
            raise TransportError("GET apps: the answer has no 'apps' list")
        return apps

    def generate(self, route: str, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._call("POST", route, json=body, headers=headers)

    def status(self, task_id: str) -> dict[str, Any]:
        return self._call("GET", f"status/{task_id}")

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self._call("POST", "cancelTask", json={"id": task_id})

    def download(self, url: str, path: Path) -> Path:
        """Save one output (an http(s) URL or a data: URI) to ``path``; atomic, size-capped."""
        if url.startswith("data:"):
            _write_atomic(path, [decode_data_uri(url)])
            return path
        target = urljoin(self.api_url, url)
        for attempt in range(self.retries + 1):
            try:
                with self._download.stream("GET", target) as resp:
                    if resp.status_code in RETRY_STATUSES and attempt < self.retries:
                        self._wait(resp.headers.get("retry-after"), ApiError(resp.status_code, {}))
                        continue
                    if resp.status_code != 200:
                        resp.read()
                        raise ApiError(resp.status_code, _envelope(resp))
                    _write_atomic(path, _capped(resp.iter_bytes(), MAX_DOWNLOAD_BYTES))
                    return path
            except httpx.HTTPError as exc:
                raise TransportError(f"download failed: {_describe(exc)}") from None
        raise AssertionError("unreachable")

    # --- plumbing -------------------------------------------------------------

    def _call(self, method: str, route: str, **kwargs: Any) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            try:
                resp = self._http.request(method, self.api_url + route, **kwargs)
            except httpx.HTTPError as exc:
                raise TransportError(f"{method} {route}: {_describe(exc)}") from None
            if resp.status_code in RETRY_STATUSES and attempt < self.retries:
                self._wait(resp.headers.get("retry-after"), ApiError(resp.status_code, _envelope(resp)))
                continue
            body = _envelope(resp)
            if resp.status_code >= 400:
                raise ApiError(resp.status_code, body)
            return body
        raise AssertionError("unreachable")

    def _wait(self, header: str | None, error: ApiError) -> None:
        seconds = min(retry_after_seconds(header), self.max_wait)
        if self.on_wait is not None:
            self.on_wait(seconds, error)
        self.pause(seconds)


def _envelope(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        if resp.status_code >= 400:
            return {"error": f"HTTP {resp.status_code}", "error_data": resp.text[:300].strip() or None}
        raise TransportError(f"HTTP {resp.status_code}: the answer is not JSON") from None
    if not isinstance(body, dict):
        raise TransportError(f"HTTP {resp.status_code}: the answer is not a JSON object")
    return body


def _describe(exc: httpx.HTTPError) -> str:
    kind = {
        httpx.ConnectError: "could not connect",
        httpx.TimeoutException: "timed out",
    }
    for cls, text in kind.items():
        if isinstance(exc, cls):
            return f"{text} ({exc})" if str(exc) else text
    return f"{type(exc).__name__}: {exc}"


def _capped(chunks, limit: int):
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise TransportError(f"download is larger than {limit} bytes; refused")
        yield chunk


def _write_atomic(path: Path, chunks) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
