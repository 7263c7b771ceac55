"""The application's log lines reach the replica's Serve log file at once, with Serve's context."""

from __future__ import annotations

import json
import logging
import logging.handlers

import pytest

from deployments.logs import APP_LOGGERS, SERVE_LOGGER, route_app_logs


class _Context(logging.Filter):
    """Stands in for Serve's context filters: adds the request id."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = "serve-request-1"
        return True


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"message": record.getMessage(), "request_id": getattr(record, "request_id", None),
                           "tenant": getattr(record, "tenant", None), "levelname": record.levelname})


@pytest.fixture
def serve_log(tmp_path):
    """A Serve-configured replica logger as Serve 2.60 sets it up: a MemoryHandler that buffers 1000 records
    (the throughput preset), with the context filters, in front of a file handler with a JSON formatter."""
    serve = logging.getLogger(SERVE_LOGGER)
    saved = (serve.handlers[:], serve.level, serve.propagate)
    saved_app = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level,
                        logging.getLogger(name).propagate) for name in APP_LOGGERS}
    path = tmp_path / "replica.log"
    target = logging.FileHandler(path)
    target.setFormatter(_Json())
    buffered = logging.handlers.MemoryHandler(1000, flushLevel=logging.ERROR, target=target)
    buffered.addFilter(_Context())
    serve.handlers = [buffered]
    serve.setLevel(logging.INFO)
    serve.propagate = False
    yield path
    serve.handlers, serve.level, serve.propagate = saved
    for name, (handlers, level, propagate) in saved_app.items():
        logger = logging.getLogger(name)
        logger.handlers, logger.level, logger.propagate = handlers, level, propagate
    target.close()


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_app_lines_are_written_at_once_with_serves_context(serve_log):
    route_app_logs()
    route_app_logs()  # idempotent: one handler, one line per record
    logging.getLogger("ingress.inputs.fetch").info("input refused (incident abc123)", extra={"tenant": "t1"})
    logging.getLogger("deployments.families").debug("too chatty for INFO")
    assert lines(serve_log) == [{"message": "input refused (incident abc123)", "request_id": "serve-request-1",
                                 "tenant": "t1", "levelname": "INFO"}]
    logging.getLogger("ray.serve").info("serve's own access line")  # Serve's own stay buffered, as Serve set them
    assert len(lines(serve_log)) == 1


def test_without_routing_the_app_lines_never_reach_the_file(serve_log):
    logger = logging.getLogger("storage.s3")
    logger.handlers, logger.propagate = [], True
    logging.getLogger("storage").handlers, logging.getLogger("storage").propagate = [], True
    logger.info("lost")
    assert not serve_log.exists() or lines(serve_log) == []
