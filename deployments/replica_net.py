"""Keep a Serve replica's inter-deployment gRPC server off the wildcard address.

Ray Serve 2.60 starts one gRPC server per replica for deployment-to-deployment
calls (what throughput mode routes requests over) and binds it to ``[::]:0``,
with no setting to change it. Ray's token authentication guards it, but it
still listens on every interface. Every deployment class of this project calls
:func:`bind_replica_grpc_to_node_ip` in its constructor (through :func:`deployments.replica.prepare_replica`), which Serve runs before
it starts that server; the bind address becomes the node's own IP (127.0.0.1 in
the embedded default, the pod IP on Kubernetes), which is the address Serve's
router dials anyway. If Ray's internals move, it logs a warning and changes
nothing (``tests/e2e`` checks the listeners).
"""

from __future__ import annotations

import ipaddress
import logging

log = logging.getLogger(__name__)

_WILDCARD = "[::]:"


def bind_replica_grpc_to_node_ip() -> None:
    """Patch this process's Serve replica so its internal gRPC server binds the node IP."""
    try:
        import ray
        from ray.serve._private import replica
    except ImportError:  # not inside Ray
        return
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None:
        log.warning("ray.serve replica internals changed: the inter-deployment gRPC server keeps its default bind")
        return
    if getattr(original, "_studio_node_ip", False):
        return
    try:
        node_ip = ray.util.get_node_ip_address()
    except Exception:  # not connected to a cluster (a unit test)
        return
    host = f"[{node_ip}]" if ipaddress.ip_address(node_ip).version == 6 else node_ip

    def add_port(server, address: str):
        if address.startswith(_WILDCARD):
            address = f"{host}:{address[len(_WILDCARD):]}"
        return original(server, address)

    add_port._studio_node_ip = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port
