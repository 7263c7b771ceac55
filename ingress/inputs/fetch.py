"""The guarded HTTP client: fetching a user-supplied URL without letting it reach inside.

Every image a request names is untrusted input, and a URL is untrusted input that makes *us*
open a connection. :func:`load_image` therefore accepts only ``http``/``https`` URLs, refuses
every destination that is not globally routable (loopback, RFC 1918 private ranges,
link-local including the ``169.254.169.254`` cloud-metadata address, CGNAT ``100.64/10``,
multicast, reserved, unspecified, unique-local ``fc00::/7`` including AWS's ``fd00:ec2::254``,
``fe80::/10``, and IPv6 wrappers that embed a forbidden IPv4 address: IPv4-mapped and -compatible,
NAT64, 6to4 and Teredo), refuses encoded IPv4 hosts (``2130706433``, ``0177.0.0.1``,
``0x7f.1``) and ``localhost`` names without resolving them, connects to exactly the address
it validated (one DNS lookup, so DNS rebinding cannot move the connection), sends the original
``Host`` header and verifies TLS (SNI and certificate) against the *hostname*, follows at most
``max_redirects`` redirects by hand while re-checking every hop with the same rules, caps the
body while streaming (and up front from ``Content-Length``) and the total wall time, requires a
2xx, and only then decodes: the format is decided by Pillow from the magic bytes, never from
``Content-Type``, and the pixel count is checked from the header before any pixel data is
decoded. Every problem with the input is an :class:`~ingress.contract.errors.InputFetchError` naming the
request field.

**Choice of SSRF guard: ``ssrfguard`` (``ssrfguard[httpx]>=0.4.1,<0.5``).** We evaluated three
libraries against our requirements. ``safehttpx`` 0.2 was rejected: it is built on ``httpx2``
(not ``httpx``), its address check misses CGNAT ``100.64/10`` and decodes no IPv6 wrappers
(NAT64, 6to4, Teredo), when a name resolves to a mix of private and public addresses it quietly
picks a public one instead of refusing, it falls back to querying Google's public DNS over the
network, it has no redirect handling (it simply does not follow), and no byte cap.
``drawbridge`` 0.1.2 (alpha) was a close second: it pins the validated address, refuses a name
with any private answer, re-validates each redirect hop while streaming, and caps bytes; but it
pins by rewriting the request URL to the IP and setting ``Host``/SNI by hand, its only loopback
escape hatch is ``allow_private`` (every private range at once) or an IP allow-list applied
after unwrapping IPv4-mapped addresses (so allowing ``127.0.0.0/8`` would also admit
``::ffff:127.0.0.1``), it has no total wall-time cap, and it blocks NAT64/6to4/Teredo by
whole prefix rather than decoding them.
``ssrfguard`` 0.4.1 fits: it pins at httpcore's *network-backend* seam (one ``getaddrinfo`` per
connection, run in a worker thread, every answer validated, a name with any forbidden answer
refused outright, the socket opened to the validated address and its peer re-checked), so TLS
SNI and certificate verification stay httpcore's own code against the hostname; its address
table is generated from the IANA special-purpose registries and decodes IPv4-mapped/compatible,
NAT64, 6to4 and Teredo wrappers; it refuses decimal/octal/short IPv4 encodings at the URL layer;
it re-checks the whole URL on every request, so each redirect hop we follow is checked again;
and it has an explicit, family-exact allow-list, which is how ``allow_loopback`` permits only
``127.0.0.0/8`` and ``::1`` (not ``::ffff:127.0.0.1``, not anything else). It has zero runtime
dependencies. It does not cap bytes or total time and is young (no independent audit; it imports
private httpx/httpcore internals, hence the tight version range), so this module adds, on top
of it: hex-encoded IPv4 and ``localhost`` name refusal before resolution, manual redirect
following with streamed (bounded) reads, the byte and wall-time caps, ``trust_env=False`` (an
environment proxy would resolve the name itself and defeat pinning), refusal of compressed
transfer encodings, and the decode-side checks. Residual risk: a thread blocked in
``getaddrinfo`` cannot be cancelled, so a hostile authoritative DNS server can make one request
overrun ``timeout_seconds`` by the system resolver's own timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ipaddress
import logging
import re
import socket
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from ssrfguard import BlockedAddressError, BlockedURLError, Policy, SSRFGuardError, TooManyRedirectsError
from ssrfguard.httpx import AsyncClient

from ingress.contract.errors import InputFetchError

__all__ = ["FetchLimits", "check_destination", "check_url", "fetch_url", "guarded_async_client", "is_forbidden_address"]

log = logging.getLogger(__name__)

#: What a client is told when a name resolves to an address we refuse. Never the address:
#: a tenant could otherwise map internal DNS names by submitting them.
REFUSED_ADDRESS = "URL refused: its host resolves to an address that is not publicly routable"
#: What a client is told of every fetch that failed on the network or on the peer's answer (:func:`fetch_failed`).
FETCH_FAILED = "could not reach the URL"

MIB = 1024 * 1024

#: Loopback networks permitted by ``FetchLimits.allow_loopback`` (tests only). ssrfguard matches
#: allow-list entries per address family, so ``::ffff:127.0.0.1`` stays refused.
_LOOPBACK_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

#: Stand-in for ``socket.getaddrinfo`` handed to ssrfguard; ``None`` means the system resolver.
#: Tests replace it so no DNS query ever leaves the machine. Whatever it returns is validated.
_resolver: Callable[..., Any] | None = None

#: TLS verification handed to httpx: ``True`` (certifi's CA bundle) or an ``ssl.SSLContext``.
#: Tests replace it with a context trusting a throwaway CA. Never ``False``.
_verify: ssl.SSLContext | bool = True

_USER_AGENT = "studio-serve-image-fetcher/0.1"
_ACCEPT = "image/png,image/jpeg,image/webp;q=0.9,*/*;q=0.1"
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_MAX_URL_LENGTH = 8192
_CHUNK = 64 * 1024

# One label of an inet_aton-style IPv4 host: decimal, octal (leading 0) or hex (0x...).
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


@dataclass(frozen=True)
class FetchLimits:
    """Caps applied to every user-supplied image. Frozen, hashable and picklable.

    Attributes:
        max_bytes: Largest encoded image accepted, in bytes (URL body or decoded base64).
        timeout_seconds: Total wall time for fetching a URL, redirects included.
        connect_timeout_seconds: Time allowed to open each TCP connection.
        max_redirects: Redirect hops followed before giving up (0 = refuse any redirect).
        max_pixels: Largest ``width * height`` accepted, checked from the image header before
            any pixel data is decoded (decompression-bomb guard). 40 MP covers 6144x6144.
            Pillow's own guard (``Image.MAX_IMAGE_PIXELS``, ~89 MP; refusal at twice that)
            still applies above this, so values beyond ~178 MP have no effect.
        allowed_formats: Pillow format names accepted, decided from the bytes themselves.
        allowed_ports: Ports a URL may use, or ``None`` for any port. The address checks are
            what make a URL safe; this is an optional extra narrowing.
        allow_loopback: TESTS ONLY. Permits ``127.0.0.0/8`` and ``::1``, and the ``localhost``
            name, and nothing else that is not globally routable.
    """

    max_bytes: int = 20 * MIB
    timeout_seconds: float = 10.0
    connect_timeout_seconds: float = 3.0
    max_redirects: int = 3
    max_pixels: int = 40_000_000
    allowed_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP")
    allowed_ports: tuple[int, ...] | None = None
    allow_loopback: bool = False

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if self.timeout_seconds <= 0 or self.connect_timeout_seconds <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_redirects < 0:
            raise ValueError("max_redirects must not be negative")
        if self.max_pixels < 1:
            raise ValueError("max_pixels must be positive")
        formats = tuple(f.upper() for f in self.allowed_formats)
        if not formats:
            raise ValueError("allowed_formats must not be empty")
        object.__setattr__(self, "allowed_formats", formats)
        if self.allowed_ports is not None:
            ports = tuple(sorted(set(int(p) for p in self.allowed_ports)))
            if not ports or not all(1 <= p <= 65535 for p in ports):
                raise ValueError("allowed_ports must be non-empty TCP ports, or None for any")
            object.__setattr__(self, "allowed_ports", ports)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------



# ---------------------------------------------------------------------------------------------
# URL checks that need no I/O
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _policy(
    allow_loopback: bool, allowed_ports: tuple[int, ...] | None, max_redirects: int
) -> Policy:
    ports = frozenset(range(1, 65536)) if allowed_ports is None else frozenset(allowed_ports)
    return Policy(
        allowed_schemes=frozenset({"http", "https"}),
        allowed_networks=_LOOPBACK_NETWORKS if allow_loopback else (),
        allowed_ports=ports,
        allow_userinfo=False,
        on_partial_block="reject",
        # We follow redirects ourselves and count them; ssrfguard's counter sees one hop per
        # request, so this only matters for max_redirects=0 (refuse any redirect), which agrees.
        max_redirects=max_redirects,
        max_url_length=_MAX_URL_LENGTH,
    )


@functools.lru_cache(maxsize=1)
def _default_ssl_context() -> ssl.SSLContext:
    # Built once: loading the CA bundle per request would be blocking work on the event loop.
    # Hostname checking and CERT_REQUIRED are on; httpcore verifies against the URL's host.
    return httpx.create_ssl_context(verify=True, trust_env=False)


def _policy_for(limits: FetchLimits) -> Policy:
    return _policy(limits.allow_loopback, limits.allowed_ports, limits.max_redirects)


def is_forbidden_address(address: str, limits: FetchLimits | None = None) -> bool:
    """Whether connecting to this IP address is refused under ``limits`` (no I/O).

    Raises ValueError if ``address`` is not an IP address.
    """
    limits = limits or FetchLimits()
    return not _policy_for(limits).permits_address(ipaddress.ip_address(address.strip("[]")))


def check_url(url: str, field: str, limits: FetchLimits) -> None:
    """Refuse a URL on everything decidable without the network (scheme, port, credentials,
    host shape, encoded IPv4 forms, ``localhost`` names, literal forbidden addresses).

    A URL passing this still has its resolved addresses checked at connection time.

    Raises:
        InputFetchError: If the URL is refused.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, UnicodeError) as exc:
        raise InputFetchError(field, f"is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise InputFetchError(
            field, f"URL scheme {parsed.scheme!r} is not allowed; only http and https are"
        )
    host = parsed.host.lower().rstrip(".")
    if not host:
        raise InputFetchError(field, "URL has no host")
    _check_host_shape(host, field, limits)
    try:
        _policy_for(limits).check_url(str(parsed))
    except SSRFGuardError as exc:
        raise _refusal(field, exc) from None


async def check_destination(url: str, field: str, limits: FetchLimits) -> None:
    """:func:`check_url`, then resolve the host once and refuse it if any address it
    resolves to is forbidden: what a fetch would refuse, without connecting (used for
    webhook URLs at submit; delivery checks again)."""
    check_url(url, field, limits)
    parsed = httpx.URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    resolve = _resolver or socket.getaddrinfo
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(limits.connect_timeout_seconds):
            # A thread of its own: a lookup the timeout gave up on keeps its thread until the
            # system resolver returns, and must not hold one the store calls need.
            answers = await loop.run_in_executor(_dns_pool(), resolve, parsed.host, port, 0, socket.SOCK_STREAM)
    except TimeoutError:
        raise fetch_failed(field, "the host name did not resolve in time") from None
    except OSError as exc:
        raise fetch_failed(field, f"the host name does not resolve: {exc}") from None
    policy = _policy_for(limits)
    for answer in answers:
        address = ipaddress.ip_address(str(answer[4][0]).split("%")[0])
        if not policy.permits_address(address):
            incident = log_incident(field, f"{parsed.host} resolves to {address}")
            raise InputFetchError(field, f"{REFUSED_ADDRESS} (incident {incident})")


def _check_host_shape(host: str, field: str, limits: FetchLimits) -> None:
    if ":" in host:  # IPv6 literal; ssrfguard classifies it
        return
    labels = host.split(".")
    if all(_NUMERIC_LABEL.match(label) for label in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise InputFetchError(
                field,
                f"URL host {host!r} is an encoded IPv4 address (decimal/octal/hex/short form); "
                "write addresses as dotted quads",
            ) from None
    if not limits.allow_loopback and (host == "localhost" or host.endswith(".localhost")):
        raise InputFetchError(field, f"URL host {host!r} is a loopback name")


@functools.lru_cache(maxsize=1)
def _dns_pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="dns")


def _refusal(field: str, exc: SSRFGuardError) -> InputFetchError:
    """The client's side of an ssrfguard refusal: what was refused and why, never an address
    that a name resolved to (the detail goes to the log under an incident id)."""
    if isinstance(exc, BlockedURLError):  # about the URL as the client wrote it: the reason is theirs to read
        incident = log_incident(field, str(exc))
        return InputFetchError(field, f"URL refused: {clip_text(exc.reason)} (incident {incident})")
    if isinstance(exc, TooManyRedirectsError):
        return fetch_failed(field, "too many redirects")
    incident = log_incident(field, str(exc))
    if isinstance(exc, BlockedAddressError):
        return InputFetchError(field, f"{REFUSED_ADDRESS} (incident {incident})")
    return InputFetchError(field, f"URL refused (incident {incident})")


def log_incident(field: str, detail: str) -> str:
    """Log what the client is not told; return the incident id that ties the two."""
    incident = uuid.uuid4().hex[:12]
    log.info("input %s refused (incident %s): %s", field, incident, clip_text(detail),
             extra={"field": field, "incident": incident, "cause": clip_text(detail)})
    return incident


def clip_text(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------


async def fetch_url(url: str, field: str, limits: FetchLimits) -> bytes:
    if len(url) > _MAX_URL_LENGTH:
        raise InputFetchError(field, f"URL is longer than {_MAX_URL_LENGTH} characters")
    check_url(url, field, limits)
    timeout = httpx.Timeout(limits.timeout_seconds, connect=limits.connect_timeout_seconds)
    try:
        async with asyncio.timeout(limits.timeout_seconds):
            async with AsyncClient(
                policy=_policy_for(limits),
                resolver=_resolver,
                verify=_default_ssl_context() if _verify is True else _verify,
                trust_env=False,  # an environment proxy would resolve the name itself
                follow_redirects=False,  # followed below, with bounded reads and re-checks
                timeout=timeout,
                headers={
                    "User-Agent": _USER_AGENT,
                    "Accept": _ACCEPT,
                    "Accept-Encoding": "identity",
                },
            ) as client:
                return await _fetch_following_redirects(client, url, field, limits)
    except InputFetchError:
        raise
    except TimeoutError:
        raise fetch_failed(field, f"no answer within {limits.timeout_seconds:g} s") from None
    except SSRFGuardError as exc:
        raise _refusal(field, exc) from None
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, ConnectionError, socket.gaierror, OSError, ValueError,
            UnicodeError) as exc:
        raise fetch_failed(field, f"{type(exc).__name__}: {exc}") from None


def fetch_failed(field: str, cause: str) -> InputFetchError:
    """Every fetch that failed on the network or on the peer's answer gets this one message, whatever the
    cause — refused, timed out, reset, a TLS or HTTP error, a non-2xx status, a bad redirect — so that the
    answers cannot be used to map which hosts and ports are open; the cause is logged under the incident."""
    incident = log_incident(field, cause)
    return InputFetchError(field, f"{FETCH_FAILED} (incident {incident})")


async def _fetch_following_redirects(
    client: AsyncClient, url: str, field: str, limits: FetchLimits
) -> bytes:
    current = url
    for hop in range(limits.max_redirects + 1):
        check_url(current, field, limits)  # every hop, before any connection for it
        async with client.stream("GET", current) as response:
            if response.status_code in _REDIRECT_STATUSES and "location" in response.headers:
                if hop >= limits.max_redirects:
                    raise fetch_failed(field, f"more than {limits.max_redirects} redirects")
                try:
                    current = str(response.url.join(response.headers["location"]))
                except (httpx.InvalidURL, ValueError, UnicodeError):
                    raise fetch_failed(field, "a redirect to an invalid location") from None
                continue
            if not 200 <= response.status_code < 300:
                raise fetch_failed(field, f"HTTP {response.status_code}")
            return await _read_capped(response, field, limits)
    raise AssertionError("unreachable")  # pragma: no cover


async def _read_capped(response: httpx.Response, field: str, limits: FetchLimits) -> bytes:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise fetch_failed(field, f"Content-Encoding {clip_text(encoding, 40)!r}")
    declared = response.headers.get("content-length")
    if declared is not None:
        try:
            declared_size = int(declared)
        except ValueError:
            raise fetch_failed(field, "an invalid Content-Length") from None
        if declared_size > limits.max_bytes:
            raise InputFetchError(
                field,
                f"URL response is {declared_size} bytes; the limit is {limits.max_bytes} bytes",
            )
    buffer = bytearray()
    async for chunk in response.aiter_raw(_CHUNK):
        buffer += chunk
        if len(buffer) > limits.max_bytes:
            raise InputFetchError(
                field, f"URL response exceeds the limit of {limits.max_bytes} bytes"
            )
    if not buffer:
        raise fetch_failed(field, "an empty response")
    return bytes(buffer)


# ---------------------------------------------------------------------------------------------
# data: URIs and bare base64
# ---------------------------------------------------------------------------------------------


def guarded_async_client(
    limits: FetchLimits,
    *,
    timeout_seconds: float | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncClient:
    """An ``httpx.AsyncClient`` under exactly the SSRF rules image fetching uses.

    Same ssrfguard policy (from ``limits``: ``allow_loopback``, ``allowed_ports``,
    ``max_redirects``), same resolver and TLS verification hooks (so tests that replace
    ``_resolver``/``_verify`` cover it too), ``trust_env=False`` and redirects NOT followed.
    Every request re-checks its URL and connects only to the address it validated.

    The caller still owns: :func:`check_url` before the request (encoded-IPv4 and
    ``localhost`` refusal), a total wall-time cap (``asyncio.timeout``), and capped body reads.
    ``timeout_seconds`` (default ``limits.timeout_seconds``) is httpx's per-operation timeout;
    the connect timeout is ``limits.connect_timeout_seconds`` (at most ``timeout_seconds``).
    """
    total = limits.timeout_seconds if timeout_seconds is None else timeout_seconds
    return AsyncClient(
        policy=_policy_for(limits),
        resolver=_resolver,
        verify=_default_ssl_context() if _verify is True else _verify,
        trust_env=False,  # an environment proxy would resolve the name itself
        follow_redirects=False,
        timeout=httpx.Timeout(total, connect=min(limits.connect_timeout_seconds, total)),
        headers=headers,
    )

