"""The queue-aware autoscaling policy: Serve's ongoing requests plus the published backlog."""

import time
from types import SimpleNamespace

from deployments.autoscaling import QueueDepthPolicy, decode_depths, desired_replicas, encode_depths


class Config:
    def __init__(self, target):
        self.target = target

    def get_target_ongoing_requests(self):
        return self.target


def ctx(name="sd15-a10g", ongoing=0.0, running=1, target=1.0):
    return SimpleNamespace(deployment_name=name, total_num_requests=ongoing, current_num_replicas=running,
                           config=Config(target))


def test_the_backlog_counts_like_ongoing_requests():
    assert desired_replicas(ongoing=2, queued=0, running=1, target_ongoing=2) == 1
    assert desired_replicas(ongoing=2, queued=6, running=1, target_ongoing=2) == 4
    assert desired_replicas(ongoing=0, queued=3, running=0, target_ongoing=2) == 1  # from zero: one first
    assert desired_replicas(ongoing=0, queued=0, running=0, target_ongoing=2) == 0


def test_the_policy_reads_the_published_record_at_most_once_per_interval():
    reads = []
    record = encode_depths({"sd15-a10g": 6, "sdxl-a100": 1})

    def reader():
        reads.append(1)
        return record

    policy = QueueDepthPolicy(poll_interval_s=60, reader=reader)
    desired, state = policy(ctx(ongoing=2, running=1, target=2))
    assert (desired, state) == (4, {"queued_tasks": 6})
    assert policy(ctx("sdxl-a100", ongoing=0, running=1, target=1))[0] == 1
    assert policy(ctx("other"))[0] == 0  # nothing published for it
    assert len(reads) == 1


def test_a_stale_missing_or_broken_record_is_no_backlog():
    now = time.time()
    assert decode_depths(encode_depths({"a": 5}, now=now - 100), now, stale_after_s=30) == {}
    assert decode_depths(None, now, 30) == {} and decode_depths(b"{not json", now, 30) == {}
    assert decode_depths(b'{"at": 1, "queued": [1]}', 2, 30) == {}
    assert decode_depths(encode_depths({"a": -3}, now=now), now, 30) == {"a": 0}

    def broken():
        raise ConnectionError("GCS away")

    assert QueueDepthPolicy(reader=broken)(ctx(ongoing=3, running=1, target=1))[0] == 3  # Serve's view alone
