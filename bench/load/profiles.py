"""Load profiles: staged user counts, fault times and the workload's constants.

Plain Python on purpose: the locustfile (gevent, in its own process) and the
runner both read it.
"""

from __future__ import annotations

from dataclasses import dataclass

KEY, TENANT = "sk-bench-load", "load"
#: The apps of the load config (bench/load/config.py): one per family deployment.
SYNC_APP, ZERO_APP = "ap-load-sd15", "ap-load-sdxl"
#: Family deployments: one that never goes below one replica, one that scales from zero.
DEPLOYMENTS = {"sd15-a10g": SYNC_APP, "sdxl-a100": ZERO_APP}
MIN_REPLICAS = {"sd15-a10g": 1, "sdxl-a100": 0}
MAX_REPLICAS = 3
#: The smallest job the contract accepts: 256x256, one step, one image.
JOB = {"height": 256, "width": 256, "num_inference_steps": 1, "prompt": "a lighthouse at dusk"}
#: (connect, read) seconds: every HTTP call of the load test ends within these.
CLIENT_TIMEOUT = (5.0, 60.0)
#: Seconds the service gives a synchronous call before answering 504 (below the client's read timeout).
SYNC_TIMEOUT = 30
RETRY_AFTER = 2
#: An async user polls its task at most this long, then moves on (the runner settles it after the load).
POLL_LIMIT_S = 90.0


@dataclass(frozen=True)
class Stage:
    name: str
    seconds: float
    users: int
    spawn_rate: float


@dataclass(frozen=True)
class Fault:
    """SIGKILL the processes titled ``target`` at ``at`` seconds after the load starts."""

    at: float
    target: str  # "family" | "ingress" | "proxy"


@dataclass(frozen=True)
class Profile:
    name: str
    stages: tuple[Stage, ...]
    faults: tuple[Fault, ...]
    settle_s: float  # bounded wait for every async task to end after the load

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def boundaries(self) -> list[tuple[float, str]]:
        """(start offset, stage name) of every stage."""
        out, t = [], 0.0
        for s in self.stages:
            out.append((t, s.name))
            t += s.seconds
        return out


PROFILES = {
    "short": Profile(
        "short",
        stages=(
            Stage("warm-up", 8, 2, 2),
            Stage("ramp", 15, 10, 1),
            Stage("overload", 30, 20, 4),
            Stage("cool-down", 32, 2, 4),
        ),
        # Each fault waits for the service to answer again after the previous one (at most 15 s past
        # its time). Serve replaces a dead proxy after 3 failed health checks 10 s apart (~30 s): it is
        # killed early enough to come back before the load ends.
        faults=(Fault(24, "family"), Fault(30, "ingress"), Fault(40, "proxy")),
        settle_s=75,
    ),
    "full": Profile(
        "full",
        stages=(
            Stage("warm-up", 45, 2, 1),
            Stage("ramp", 120, 12, 0.1),
            Stage("overload", 180, 24, 2),
            Stage("cool-down", 150, 2, 2),
        ),
        faults=(Fault(190, "family"), Fault(230, "ingress"), Fault(270, "proxy")),
        settle_s=180,
    ),
}
