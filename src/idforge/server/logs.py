"""Structured logs: one JSON object per line, with the request id wherever a request is involved."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            entry["trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at each record, not the stream of the moment it was made: a server
    started inside another program (tests, notebooks) that swaps stderr never logs into a closed file."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always wins
        pass


def setup_logging(level: str = "info") -> None:
    """JSON lines on stderr for the idforge loggers (uvicorn's own access log is replaced by ours)."""
    handler = CurrentStderrHandler()
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("idforge")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
