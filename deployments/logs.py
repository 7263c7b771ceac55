"""The application's own log lines, in the replica's Serve log file.

Ray Serve configures only its own logger (``ray.serve``) in a replica: a JSON file per replica
under Ray's log directory (``serve/replica_<app>_<deployment>_<id>.log``), at the application's
``logging_config.log_level``, with Serve's context (request id, route, replica) added to each
record. Loggers of ours (``ingress.*``, ``deployments.*``, ``storage.*``) would otherwise reach
Python's root logger (WARNING, no file). :func:`route_app_logs` sends them to that same file, at
Serve's level, through Serve's own filters and formatter — but without Serve's in-memory buffer
(the throughput preset buffers up to 1000 records before writing), so an incident id a client has
just received is already in the file.
"""

from __future__ import annotations

import logging
import logging.handlers

#: The application's top-level loggers.
APP_LOGGERS = ("ingress", "deployments", "storage")
SERVE_LOGGER = "ray.serve"


class ServeFileHandler(logging.Handler):
    """Writes a record the way Serve's replica handlers would, without their buffering: through each
    buffered handler's filters (Serve's context) straight to its file, and to any other handler as is.
    Looks the handlers up at each record, so a reconfigured Serve logger is followed."""

    def emit(self, record: logging.LogRecord) -> None:
        for handler in list(logging.getLogger(SERVE_LOGGER).handlers):
            if isinstance(handler, logging.handlers.MemoryHandler):
                target = handler.target
                if target is not None and handler.filter(record):
                    target.handle(record)
            elif record.levelno >= handler.level:
                handler.handle(record)


def route_app_logs() -> None:
    """Send the application's loggers to this replica's Serve log (call from each deployment's
    constructor; Serve has configured its logger by then). Idempotent."""
    level = logging.getLogger(SERVE_LOGGER).level or logging.INFO
    for name in APP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, ServeFileHandler) for h in logger.handlers):
            logger.addHandler(ServeFileHandler())
        logger.setLevel(level)
        logger.propagate = False
