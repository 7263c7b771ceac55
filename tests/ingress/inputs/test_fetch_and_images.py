"""Tests for ingress.inputs: SSRF-guarded image loading.

Real HTTP(S) servers run on 127.0.0.1 (threads, ephemeral ports). No test sends a packet to a
non-loopback address or a DNS server: an autouse fixture replaces the resolver handed to the
SSRF guard (only ``localhost`` and numeric literals resolve, without I/O) and wraps
``anyio.connect_tcp`` (the only place the guard opens sockets) so that any attempt to connect
anywhere but loopback fails the test loudly.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import io
import ipaddress
import logging
import os
import pickle
import re
import socket
import ssl
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from ingress.contract.errors import InputFetchError
from ingress.inputs import (
    FetchLimits,
    check_destination,
    check_url,
    is_forbidden_address,
    load_image,
)
from ingress.inputs import fetch as inputs

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("connections")]

LOOP = FetchLimits(allow_loopback=True)


# ---------------------------------------------------------------------------------------------
# Fixture images
# ---------------------------------------------------------------------------------------------


def _png(size=(300, 200), color=(200, 30, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(size=(320, 240), exif_orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, (10, 120, 250))
    if exif_orientation is None:
        img.save(buf, "JPEG")
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def _noisy_png(size=(256, 256)) -> bytes:
    img = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height, built row by row so it never exists decoded."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    parts = []
    block = row * 256
    for _ in range(height // 256):
        parts.append(comp.compress(block))
    parts.append(comp.compress(row * (height % 256)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


PNG = _png()
JPEG = _jpeg()
NOISY = _noisy_png()
TRUNCATED = NOISY[: len(NOISY) * 6 // 10]
BOMB = _bomb_png(20000, 20000)
BIG_BUT_UNDER_PILLOW_LIMIT = _bomb_png(7000, 7000)  # 49 MP: over our 40 MP, under Pillow's


# ---------------------------------------------------------------------------------------------
# Local servers
# ---------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/octet-stream", **headers):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str):
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):  # noqa: C901 - a routing table
        self.server.seen.append((self.path, self.headers.get("Host")))
        path, _, query = self.path.partition("?")
        try:
            if path == "/png":
                self._send(200, PNG, "image/png")
            elif path == "/png-as-text":
                self._send(200, PNG, "text/plain")
            elif path == "/jpeg":
                self._send(200, JPEG, "image/jpeg")
            elif path == "/rotated":
                self._send(200, _jpeg((300, 200), exif_orientation=6), "image/jpeg")
            elif path == "/text":
                self._send(200, b"hello, I am not an image\n", "image/png")
            elif path == "/bomb":
                self._send(200, BOMB, "image/png")
            elif path == "/big":
                self._send(200, BIG_BUT_UNDER_PILLOW_LIMIT, "image/png")
            elif path == "/truncated":
                self._send(200, TRUNCATED, "image/png")
            elif path == "/missing":
                self._send(404, b"nope", "text/plain")
            elif path == "/huge-declared":
                # Claims 50 MiB; sends only a little and stalls a moment. Must be refused from
                # the header alone.
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(50 * 1024 * 1024))
                self.end_headers()
                self.wfile.write(PNG[:64])
                self.wfile.flush()
                time.sleep(0.5)
            elif path == "/huge-chunked":
                # No Content-Length: 4 MiB in chunked encoding.
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = PNG + b"\x00" * (64 * 1024 - len(PNG))
                for _ in range(64):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            elif path == "/huge-until-close":
                # HTTP/1.0-style body delimited by connection close, no length at all.
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                for _ in range(64):
                    self.wfile.write(b"\x00" * 65536)
            elif path == "/slow":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                deadline = time.monotonic() + 8
                for byte in PNG:
                    if time.monotonic() > deadline:
                        break
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.05)
            elif path == "/redirect":
                self._redirect(query.removeprefix("to="))
            elif path.startswith("/chain/"):
                remaining = int(path.rsplit("/", 1)[1])
                self._redirect(f"/chain/{remaining - 1}" if remaining > 0 else "/png")
            elif path == "/gzip":
                self._send(200, zlib.compress(PNG), "image/png", Content_Encoding="deflate")
            else:
                self._send(404, b"unknown", "text/plain")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None):
        self.seen: list[tuple[str, str | None]] = []
        self.sni: list[str | None] = []
        super().__init__((host, 0), _Handler)
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def handle_error(self, request, client_address):
        # Clients hanging up mid-response is what several tests do on purpose.
        pass

    def stop(self):
        self.shutdown()
        self.server_close()


@pytest.fixture(scope="module")
def server():
    srv = _Server()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def other_server():
    srv = _Server()
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------------
# No DNS, no non-loopback packets
# ---------------------------------------------------------------------------------------------


class FakeResolver:
    """Stand-in for socket.getaddrinfo. Numeric hosts resolve without I/O; names resolve only
    from ``table``; everything else fails, so no DNS query ever leaves the machine."""

    def __init__(self):
        self.table: dict[str, list[str]] = {"localhost": ["127.0.0.1"]}
        self.calls: list[str] = []

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        self.calls.append(host)
        try:
            return socket.getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        except socket.gaierror:
            pass
        answers = self.table.get(host)
        if answers is None:
            raise socket.gaierror(socket.EAI_NONAME, f"test resolver does not know {host!r}")
        out = []
        for addr in answers:
            ip = ipaddress.ip_address(addr)
            if ip.version == 4:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port)))
            else:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (addr, port, 0, 0)))
        return out



@pytest.fixture(autouse=True)
def resolver(monkeypatch) -> FakeResolver:
    fake = FakeResolver()
    monkeypatch.setattr(inputs, "_resolver", fake)
    return fake




def run(coro):
    return asyncio.run(coro)


def refused(value: str, limits: FetchLimits = FetchLimits(), field: str = "image") -> str:
    with pytest.raises(InputFetchError) as info:
        run(load_image(value, field, limits))
    assert info.value.field == field
    assert info.value.message.startswith(f"{field}: ")
    assert info.value.status_code == 422
    return info.value.message


# ---------------------------------------------------------------------------------------------
# FetchLimits
# ---------------------------------------------------------------------------------------------


def test_fetch_limits_defaults_and_pickle():
    limits = FetchLimits()
    assert limits.max_bytes == 20 * 1024 * 1024
    assert limits.timeout_seconds == 10
    assert limits.connect_timeout_seconds == 3
    assert limits.max_redirects == 3
    assert limits.allow_loopback is False
    assert limits.allowed_formats == ("PNG", "JPEG", "WEBP")
    assert pickle.loads(pickle.dumps(LOOP)) == LOOP
    hash(limits)
    with pytest.raises(ValueError):
        FetchLimits(max_bytes=0)


# ---------------------------------------------------------------------------------------------
# Address classification (no I/O at all)
# ---------------------------------------------------------------------------------------------

FORBIDDEN = [
    "127.0.0.1", "127.9.9.9", "::1", "0.0.0.0", "::", "169.254.169.254", "169.254.1.1",
    "10.0.0.1", "192.168.1.1", "172.16.0.1", "172.31.255.255", "100.64.0.1", "224.0.0.1",
    "240.0.0.1", "255.255.255.255", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::127.0.0.1",
    "fd00:ec2::254", "fc00::1", "fe80::1", "ff02::1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::",
    "2002:a00:1::", "198.18.0.1",
]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_forbidden_addresses(address):
    assert is_forbidden_address(address)


@pytest.mark.parametrize(
    "address", ["0.0.0.0", "::ffff:127.0.0.1", "10.0.0.1", "169.254.169.254", "fe80::1", "::"]
)
def test_allow_loopback_permits_nothing_else(address):
    assert is_forbidden_address(address, LOOP)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1"])
def test_allow_loopback_permits_loopback(address):
    assert not is_forbidden_address(address, LOOP)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_allowed(address):
    assert not is_forbidden_address(address)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/x.png", "http://192.168.1.1/", "http://172.16.0.1/", "http://100.64.0.1/",
        "http://169.254.169.254/latest/meta-data/", "http://0.0.0.0/", "http://[::]/",
        "http://[::ffff:127.0.0.1]/", "http://[fd00:ec2::254]/", "http://[fe80::1]/",
        "http://[::1]/", "http://2130706433/", "http://0x7f000001/", "http://0177.0.0.1/",
        "http://0x7f.1/", "http://127.1/", "http://localhost/", "http://foo.localhost/",
        "http://user:pw@example.com/",
    ],
)
def test_check_url_refuses_without_io(url, resolver, connections):
    with pytest.raises(InputFetchError):
        check_url(url, "image", FetchLimits())
    assert resolver.calls == [] and connections == []


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/x.png", "http://169.254.169.254/", "http://2130706433/",
        "http://0x7f000001/", "http://0177.0.0.1/", "http://[::ffff:127.0.0.1]:1/",
        "http://[fd00:ec2::254]/", "http://100.64.0.1/", "http://0.0.0.0:1/",
    ],
)
def test_load_image_refuses_forbidden_literals_without_connecting(url, connections):
    # Under allow_loopback too: these are not loopback.
    refused(url, LOOP)
    assert connections == []


def test_default_limits_refuse_loopback_server(server, connections, resolver):
    before = len(server.seen)
    for url in (server.url("/png"), server.url("/png", host="localhost"), f"http://[::1]:{server.port}/png"):
        message = refused(url)
        assert "refused" in message or "loopback" in message
    assert connections == []
    assert resolver.calls == []  # refused before any lookup
    assert len(server.seen) == before


def test_name_resolving_to_private_address_is_refused_before_connecting(resolver, connections):
    resolver.table["internal.test"] = ["10.1.2.3"]
    resolver.table["mixed.test"] = ["127.0.0.1", "10.1.2.3"]
    resolver.table["mapped.test"] = ["::ffff:127.0.0.1"]
    message = refused("http://internal.test/a.png", LOOP)
    # What was refused and why, never where the name points (a tenant could map internal DNS).
    assert "not publicly routable" in message and "incident" in message
    assert "10.1.2.3" not in message and "private" not in message
    for name in ("mixed.test", "mapped.test"):  # any forbidden answer refuses the whole name
        message = refused(f"http://{name}/a.png", LOOP)
        assert "127.0.0.1" not in message and "10.1.2.3" not in message
    assert connections == []


def test_check_destination_resolves_once_without_connecting(resolver, connections):
    resolver.table["internal.test"] = ["10.1.2.3"]
    resolver.table["public.test"] = ["93.184.216.34"]
    with pytest.raises(InputFetchError) as info:
        run(check_destination("https://internal.test/hook", "webhook", FetchLimits()))
    assert "not publicly routable" in info.value.message and "10.1.2.3" not in info.value.message
    with pytest.raises(InputFetchError, match="could not reach the URL \\(incident [0-9a-f]{12}\\)$"):
        run(check_destination("https://nowhere.test/hook", "webhook", FetchLimits()))
    run(check_destination("https://public.test/hook", "webhook", FetchLimits()))
    assert connections == []


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://127.0.0.1:70/_x", "FILE:/etc/hosts",
            "javascript:alert(1)", "ws://127.0.0.1/"]
)
def test_non_http_schemes_refused(url, connections):
    assert "scheme" in refused(url, LOOP)
    assert connections == []


# ---------------------------------------------------------------------------------------------
# Fetching from loopback with allow_loopback
# ---------------------------------------------------------------------------------------------


def test_png_loads(server):
    img = run(load_image(server.url("/png"), "image", LOOP))
    assert img.size == (300, 200) and img.mode == "RGB"
    assert img.getpixel((5, 5)) == (200, 30, 40)


def test_jpeg_loads_and_content_type_is_ignored(server):
    img = run(load_image(server.url("/jpeg"), "image", LOOP))
    assert img.size == (320, 240) and img.mode == "RGB"
    assert run(load_image(server.url("/png-as-text"), "image", LOOP)).size == (300, 200)


def test_exif_orientation_applied(server):
    img = run(load_image(server.url("/rotated"), "image", LOOP))
    assert img.size == (200, 300)


def test_text_file_refused(server):
    assert "not an image" in refused(server.url("/text"), LOOP)


def failed(value: str, limits: FetchLimits, caplog, cause: str) -> str:
    """``value``'s fetch fails with the one message every fetch failure gets; the cause is in the log,
    in exactly one line, under the incident id the client was given."""
    caplog.set_level(logging.INFO, logger="ingress.inputs.fetch")
    caplog.clear()
    message = refused(value, limits)
    match = re.fullmatch(r"image: could not reach the URL \(incident ([0-9a-f]{12})\)", message)
    assert match is not None, message
    lines = [r for r in caplog.records if match.group(1) in r.getMessage()]
    assert len(lines) == 1 and cause in lines[0].getMessage(), [r.getMessage() for r in caplog.records]
    return match.group(1)


def test_non_2xx_refused(server, caplog):
    failed(server.url("/missing"), LOOP, caplog, "HTTP 404")


def test_closed_port_open_port_and_silent_port_read_alike(server, caplog):
    """What a client learns of a failed fetch cannot tell a closed port from an open one: refused,
    404 and timed out give the same text (only the incident id differs)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    quick = FetchLimits(allow_loopback=True, timeout_seconds=1.0, connect_timeout_seconds=1.0)
    failed(f"http://127.0.0.1:{closed}/x.png", quick, caplog, "ConnectError")
    failed(server.url("/missing"), quick, caplog, "HTTP 404")
    failed(server.url("/slow"), quick, caplog, "no answer within 1 s")


def test_huge_body_refused_by_content_length(server):
    limits = FetchLimits(allow_loopback=True, max_bytes=1024 * 1024)
    started = time.monotonic()
    assert str(50 * 1024 * 1024) in refused(server.url("/huge-declared"), limits)
    assert time.monotonic() - started < 0.45  # did not wait for the body


@pytest.mark.parametrize("path", ["/huge-chunked", "/huge-until-close"])
def test_huge_body_refused_while_streaming(server, path):
    limits = FetchLimits(allow_loopback=True, max_bytes=1024 * 1024)
    assert "exceeds the limit" in refused(server.url(path), limits)


def test_compressed_transfer_refused(server, caplog):
    failed(server.url("/gzip"), LOOP, caplog, "Content-Encoding")


def test_slow_body_times_out(server, caplog):
    limits = FetchLimits(allow_loopback=True, timeout_seconds=1.0, connect_timeout_seconds=1.0)
    started = time.monotonic()
    failed(server.url("/slow"), limits, caplog, "no answer within 1 s")
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.0


def test_decompression_bomb_refused(server):
    assert "pixels" in refused(server.url("/bomb"), LOOP)
    message = refused(server.url("/big"), LOOP)  # 7000x7000, under Pillow's own threshold
    assert "7000x7000" in message


def test_pixel_cap_checked_from_header():
    limits = FetchLimits(max_pixels=300 * 200 - 1)
    message = refused("data:image/png;base64," + base64.b64encode(PNG).decode(), limits)
    assert "300x200" in message


def test_truncated_image_refused(server):
    assert "truncated" in refused(server.url("/truncated"), LOOP)


def test_redirect_to_other_loopback_server(server, other_server):
    url = server.url("/redirect?to=" + other_server.url("/jpeg"))
    img = run(load_image(url, "image", LOOP))
    assert img.size == (320, 240)
    assert other_server.seen[-1][0] == "/jpeg"


def test_redirect_to_private_address_refused_without_connecting(server, connections):
    for target in ("http://10.0.0.1:%d/x.png" % server.port, "http://169.254.169.254/latest",
                   "http://[::ffff:127.0.0.1]:%d/png" % server.port, "file:///etc/passwd"):
        connections.clear()
        refused(server.url("/redirect?to=" + target), LOOP)
        assert connections == ["127.0.0.1"]  # only the first hop connected


def test_redirect_to_name_resolving_private_refused(server, resolver, connections):
    # The second hop is a name (the test resolver maps it to 10/8): its resolved address is
    # checked and refused before any connection to it.
    resolver.table["pivot.test"] = ["10.9.9.9"]
    connections.clear()
    refused(server.url("/redirect?to=http://pivot.test:%d/png" % server.port), LOOP)
    assert connections == ["127.0.0.1"]


def test_redirect_chain_limits(server, caplog):
    # /chain/N answers with N+1 redirects before the PNG.
    assert run(load_image(server.url("/chain/2"), "image", LOOP)).size == (300, 200)
    failed(server.url("/chain/3"), LOOP, caplog, "more than 3 redirects")
    no_redirects = FetchLimits(allow_loopback=True, max_redirects=0)
    failed(server.url("/chain/0"), no_redirects, caplog, "redirects")


def test_port_allow_list(server):
    limits = FetchLimits(allow_loopback=True, allowed_ports=(80, 443))
    assert "port" in refused(server.url("/png"), limits)


# ---------------------------------------------------------------------------------------------
# Pinning: the connection goes to the address that was checked, with the original Host
# ---------------------------------------------------------------------------------------------


def test_host_header_is_the_hostname(server, connections):
    img = run(load_image(server.url("/png", host="localhost"), "image", LOOP))
    assert img.size == (300, 200)
    assert server.seen[-1] == ("/png", f"localhost:{server.port}")
    assert connections == ["127.0.0.1"]


def test_connects_to_checked_address_not_a_second_lookup(server, resolver, connections):
    # The system resolver maps localhost to 127.0.0.1, where the server listens. The guard's
    # single lookup says 127.0.0.2, where nothing listens. If anything resolved the name a
    # second time (the system way), the request would succeed; it must fail instead.
    resolver.table["localhost"] = ["127.0.0.2"]
    before = len(server.seen)
    message = refused(server.url("/png", host="localhost"), LOOP)
    assert "could not reach the URL" in message and "127.0.0.2" not in message and "Errno" not in message
    assert connections and set(connections) == {"127.0.0.2"}
    assert resolver.calls == ["localhost"]
    assert len(server.seen) == before


def test_dns_rebinding_after_check_is_not_followed(server, resolver):
    # First answer is the (allowed) loopback server; every later answer would be the metadata
    # address. Exactly one lookup happens and the connection lands where it was checked.
    answers = iter([["127.0.0.1"]])

    class Rebinding(dict):
        def get(self, host, default=None):
            if host == "rebind.test":
                return next(answers, ["169.254.169.254"])
            return super().get(host, default)

    resolver.table = Rebinding(resolver.table)
    img = run(load_image(server.url("/png", host="rebind.test"), "image", LOOP))
    assert img.size == (300, 200)
    assert resolver.calls == ["rebind.test"]
    assert server.seen[-1] == ("/png", f"rebind.test:{server.port}")


# ---------------------------------------------------------------------------------------------
# TLS: SNI and certificate verification are against the hostname, not the pinned IP
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "inputs test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory: Path = tmp_path_factory.mktemp("tls")
    (directory / "leaf.pem").write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    )
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return directory


@pytest.fixture(scope="module")
def tls_server(tls_material):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_material / "leaf.pem", tls_material / "key.pem")
    sni: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: sni.append(name)
    srv = _Server(ssl_context=context)
    srv.sni = sni
    yield srv
    srv.stop()


@pytest.fixture
def trust_test_ca(monkeypatch, tls_material):
    monkeypatch.setattr(inputs, "_verify", ssl.create_default_context(cafile=str(tls_material / "ca.pem")))


def test_https_sni_and_certificate_use_hostname(tls_server, trust_test_ca, connections):
    img = run(load_image(tls_server.url("/png", host="localhost", scheme="https"), "image", LOOP))
    assert img.size == (300, 200)
    assert tls_server.sni[-1] == "localhost"
    assert connections == ["127.0.0.1"]


def test_https_certificate_checked_against_requested_name(tls_server, trust_test_ca, resolver):
    # Same pinned address, same server, but the name asked for is not on the certificate.
    resolver.table["other.test"] = ["127.0.0.1"]
    refused(tls_server.url("/png", host="other.test", scheme="https"), LOOP)
    refused(tls_server.url("/png", host="127.0.0.1", scheme="https"), LOOP)


def test_https_untrusted_ca_refused(tls_server):
    refused(tls_server.url("/png", host="localhost", scheme="https"), LOOP)


# ---------------------------------------------------------------------------------------------
# data: URIs and bare base64
# ---------------------------------------------------------------------------------------------


def test_data_uri_png():
    img = run(load_image("data:image/png;base64," + base64.b64encode(PNG).decode(), "f", FetchLimits()))
    assert img.size == (300, 200) and img.mode == "RGB"


def test_data_uri_webp_and_mpo_style_jpeg():
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (0, 255, 0)).save(buf, "WEBP")
    img = run(load_image("data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode(), "f", FetchLimits()))
    assert img.size == (96, 64) and img.mode == "RGB"
    # data URI media type parameters are tolerated; the bytes decide the format.
    value = "data:image/png;charset=binary;base64," + base64.b64encode(JPEG).decode()
    assert run(load_image(value, "f", FetchLimits())).size == (320, 240)
    # Multi-picture JPEG (what phones produce): Pillow calls it MPO; it is a JPEG.
    buf = io.BytesIO()
    Image.new("RGB", (80, 48)).save(buf, "MPO", save_all=True, append_images=[Image.new("RGB", (80, 48))])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    assert run(load_image(base64.b64encode(buf.getvalue()).decode(), "f", FetchLimits())).size == (80, 48)


def test_bare_base64_jpeg():
    encoded = base64.b64encode(JPEG).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    for value in (encoded, wrapped, encoded.rstrip("="), base64.urlsafe_b64encode(JPEG).decode()):
        img = run(load_image(value, "f", FetchLimits()))
        assert img.size == (320, 240) and img.mode == "RGB"


@pytest.mark.parametrize(
    "value",
    ["garbage string!", "hello", "", "   ", "not/an/image/but/base64ish====", "a" * 1001,
     base64.b64encode(b"just some text, not an image at all").decode()],
)
def test_garbage_refused(value):
    refused(value, field="init_image")


@pytest.mark.parametrize(
    "value",
    [
        "data:text/plain;base64," + base64.b64encode(b"hello").decode(),
        "data:image/png;base64," + base64.b64encode(b"hello, not a png").decode(),
        "data:image/png," + "rawbytes",
        "data:image/png;base64,!!!notbase64!!!",
        "data:image/gif;base64," + base64.b64encode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").decode(),
        "data:,",
    ],
)
def test_bad_data_uris_refused(value):
    refused(value, field="mask_image")


def test_gif_not_allowed():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "GIF")
    assert "allowed format (PNG, JPEG, WEBP)" in refused(base64.b64encode(buf.getvalue()).decode())
    data_uri = "data:image/gif;base64," + base64.b64encode(buf.getvalue()).decode()
    assert "allowed format (PNG, JPEG, WEBP)" in refused(data_uri)


def test_base64_size_cap_before_decoding():
    limits = FetchLimits(max_bytes=1000)
    assert "limit" in refused(base64.b64encode(NOISY).decode(), limits)


def test_truncated_and_bomb_via_data_uri():
    refused("data:image/png;base64," + base64.b64encode(TRUNCATED).decode())
    assert "pixels" in refused("data:image/png;base64," + base64.b64encode(BOMB).decode())


def test_palette_and_alpha_become_rgb():
    buf = io.BytesIO()
    Image.new("RGBA", (64, 32), (1, 2, 3, 0)).save(buf, "PNG")
    img = run(load_image(base64.b64encode(buf.getvalue()).decode(), "f", FetchLimits()))
    assert img.mode == "RGB" and img.size == (64, 32)
    buf = io.BytesIO()
    Image.new("P", (16, 16)).save(buf, "PNG", transparency=0)
    assert run(load_image(base64.b64encode(buf.getvalue()).decode(), "f", FetchLimits())).mode == "RGB"
