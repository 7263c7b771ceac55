"""What every deployment class does first in its constructor (inside a Serve replica)."""

from __future__ import annotations

from deployments.logs import route_app_logs
from deployments.replica_net import bind_replica_grpc_to_node_ip


def in_replica() -> bool:
    """Whether this code runs inside a Serve replica (not a unit test, not a script)."""
    try:
        from ray import serve

        serve.get_replica_context()
    except Exception:
        return False
    return True


def prepare_replica() -> None:
    """Keep the replica's internal gRPC server on the node's IP (:mod:`deployments.replica_net`) and
    send the application's log lines to the replica's Serve log (:mod:`deployments.logs`). Outside a
    replica it changes nothing (a test's or a script's logging stays its own)."""
    if not in_replica():
        return
    bind_replica_grpc_to_node_ip()
    route_app_logs()
