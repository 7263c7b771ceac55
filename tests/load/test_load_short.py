"""The short load profile with faults, on a service of its own (``python -m bench.load --short --faults``).

Under staged load (warm-up, ramp, overload, cool-down) a family replica, the ingress
replica and the Serve proxy are SIGKILLed one after the other. Asserted: no request
hung (every one ended within its client timeout), every async task ended and each
success's outputs download as PNGs, overload was shed with 503 + Retry-After, some
deployment scaled above its minimum, every 5xx outside the ingress/proxy windows had
the envelope, and the report and the plot were written. No latency is asserted.
"""

from __future__ import annotations

import json

import pytest

from bench.load.__main__ import run
from bench.load.profiles import PROFILES

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    out = tmp_path_factory.mktemp("load")
    fig = run(PROFILES["short"], faults=True, out=out / "results", raw=out / "raw")
    return fig, out


def test_no_request_hung(figures):
    fig, _ = figures
    req = fig["requests"]
    assert req["requests"] > 100, req
    assert req["client_timeouts"] == 0, req["outcomes_by_route"]
    assert fig["locust_exit"] in (0, 1), "locust crashed or overran its profile"  # 1: some requests failed


def test_async_tasks_all_end_with_their_outputs(figures):
    tasks = figures[0]["async"]
    assert tasks["submitted"] > 0
    assert not tasks["open"], f"still open after {tasks['settle_limit_s']} s: {tasks['open']}"
    assert tasks["terminal"] == tasks["submitted"]
    assert tasks["outputs_bad"] == 0, tasks["bad_urls"]
    assert tasks["outputs_ok"] >= tasks["by_status"].get("SUCCESS", 0) > 0
    assert tasks["failures_without_reason"] == 0


def test_overload_is_shed_with_retry_after(figures):
    fig = figures[0]
    assert fig["per_stage"]["overload"].get("503", 0) >= 1, fig["per_stage"]
    assert fig["requests"]["http_503"] == fig["requests"]["http_503_with_retry_after"]


def test_a_deployment_scaled_up(figures):
    replicas = figures[0]["replicas"]
    assert any(r["scaled_up"] for r in replicas.values()), replicas


def test_faults_hit_their_processes_and_the_service_came_back(figures):
    fig = figures[0]
    assert [f["target"] for f in fig["faults"]] == ["family", "ingress", "proxy"]
    for fault in fig["faults"]:
        assert fault["pids"], fault
        assert fault["serving_back_s"] is not None, f"the service did not answer again after killing {fault['title']}"
    assert fig["bare_5xx_outside_faults"] == 0, fig["requests"]["non_envelope_answers"]


def test_report_and_plot_written(figures):
    fig, out = figures
    results = out / "results"
    report = (results / "report.md").read_text()
    assert "## Faults (SIGKILL under load)" in report and "replicas.png" in report
    assert (results / "replicas.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert json.loads((results / "figures.json").read_text())["checks"] == fig["checks"]
    assert all(fig["checks"].values()), fig["checks"]
