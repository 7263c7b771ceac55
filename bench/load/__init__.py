"""Load test and faults-under-load test of the studio API: ``python -m bench.load``.

Modules: :mod:`.profiles` (stages, faults, the workload's constants; no third-party
imports, read by the locustfile too), :mod:`.config` (the service config it runs),
``locustfile.py`` (the users and the load shape; runs only inside the locust
subprocess), :mod:`.monitor` (replicas over time), :mod:`.faults` (SIGKILL of this
service's own processes), :mod:`.report` (figures, report.md, replicas.png) and
``__main__`` (the runner).
"""
