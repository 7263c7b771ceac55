"""The load test's parts that need no cluster: its config, its outcome words, fault windows and checks."""

from __future__ import annotations

import yaml
from ray.serve.config import AutoscalingConfig

from bench.load.config import write_load_config
from bench.load.profiles import DEPLOYMENTS, MIN_REPLICAS, PROFILES
from bench.load.report import bare_5xx_outside, fault_windows, outcome, per_stage
from ingress.wiring.registry import ServiceConfig


def row(t, status, *, error="", failure="", ms=100.0, route="POST getTextToImage sync sd15-a10g", retry_after=False):
    return {"t": t, "route": route, "status": status, "error": error, "failure": failure, "ms": ms,
            "retry_after": retry_after, "detail": ""}


def test_load_config_is_a_valid_registry_with_autoscaled_families(tmp_path):
    args = yaml.safe_load(write_load_config(tmp_path).read_text())["applications"][0]["args"]
    config = ServiceConfig.model_validate(args)
    assert [f"{f}-{g}" for f, g in config.deployment_keys()] == list(DEPLOYMENTS)
    for family, gpu in config.deployment_keys():
        options = config.families[family].options_for(gpu).serve_options()
        assert "num_replicas" not in options
        scaling = AutoscalingConfig(**options["autoscaling_config"])
        assert scaling.min_replicas == MIN_REPLICAS[f"{family}-{gpu}"] < scaling.max_replicas


def test_outcome_words():
    assert outcome(row(0, 200)) == "ok"
    assert outcome(row(0, 503, error="Overloaded", failure="HTTP 503 Overloaded", retry_after=True)) == "503"
    assert outcome(row(0, 504, error="Timeout", failure="HTTP 504 Timeout")) == "504"
    assert outcome(row(0, 500, error="non-envelope", failure="HTTP 500 non-envelope")) == "5xx-other"
    assert outcome(row(0, 500, error="ModelError", failure="HTTP 500 ModelError")) == "5xx-envelope"
    assert outcome(row(0, 0, failure="ClientTimeout")) == "timeout"
    assert outcome(row(0, 0, failure="ConnectionError")) == "connection"
    assert outcome(row(0, 200, failure="HTTP 200 non-envelope")) != "ok"


def test_fault_windows_count_answers_by_arrival_and_end_at_the_next_fault():
    faults = [{"target": "family", "at": 10.0}, {"target": "ingress", "at": 20.0}, {"target": "proxy", "at": 30.0}]
    rows = [
        row(5.0, 500, error="non-envelope", failure="HTTP 500 non-envelope", ms=15_500),  # sent before, answered at 20.5
        row(12.0, 503, error="Overloaded", failure="HTTP 503 Overloaded"),
        row(13.0, 200),
        row(31.0, 0, failure="ConnectionError"),
        row(90.0, 200),  # after the proxy's window (capped), the first success sent after its kill
    ]
    windows = fault_windows(rows, faults, load_end=100.0)
    assert [w["seen"] for w in windows] == [{"503": 1, "ok": 1}, {"5xx-other": 1}, {"connection": 1}]
    assert [w["window_s"] for w in windows] == [10.0, 10.0, 45.0]
    assert windows[0]["first_ok_after_s"] == 3.1 and windows[2]["first_ok_after_s"] == 60.1
    assert bare_5xx_outside(rows, windows) == 0
    assert bare_5xx_outside([row(12.0, 500, error="non-envelope", failure="HTTP 500 non-envelope")], windows) == 1


def test_per_stage_uses_the_profiles_boundaries():
    stages = [{"name": name, "offset": offset} for offset, name in PROFILES["short"].boundaries()]
    overload = stages[2]["offset"]
    counts = per_stage([row(1000.0 + overload + 1, 503, error="Overloaded"), row(1000.0, 200)], 1000.0, stages)
    assert counts["overload"] == {"503": 1} and counts["warm-up"] == {"ok": 1}
