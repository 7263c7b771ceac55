"""What every deployment class does first in its constructor (inside a Serve replica)."""

from __future__ import annotations

from deployments.logs import route_app_logs
from deployments.replica_net import bind_replica_grpc_to_node_ip


def prepare_replica() -> None:
    """Keep the replica's internal gRPC server on the node's IP (:mod:`deployments.replica_net`) and
    send the application's log lines to the replica's Serve log (:mod:`deployments.logs`)."""
    bind_replica_grpc_to_node_ip()
    route_app_logs()
