"""Fixtures for the ingress tests."""

import ipaddress

import anyio
import pytest


@pytest.fixture
def connections(monkeypatch) -> list[str]:
    """Every address an outbound client tried to connect to; non-loopback attempts fail the test."""
    attempted: list[str] = []
    real = anyio.connect_tcp

    async def guarded(remote_host, remote_port, *args, **kwargs):
        attempted.append(str(remote_host))
        if not ipaddress.ip_address(str(remote_host)).is_loopback:
            raise AssertionError(f"test tried to connect to non-loopback {remote_host}")
        return await real(remote_host, remote_port, *args, **kwargs)

    monkeypatch.setattr(anyio, "connect_tcp", guarded)
    return attempted
