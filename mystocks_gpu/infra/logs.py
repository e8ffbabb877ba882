"""Structured logging: ``key=value`` text for people, one JSON object per line for machines.

Use ``log.info("batch committed", extra={"fields": {"records": n}})`` or :func:`kv` to attach
structured fields. Secrets never reach a log line: configs are logged via ``Settings.masked()``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from mystocks_gpu.infra.config import LogConfig

_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def kv(**fields: Any) -> dict[str, Any]:
    """``extra=`` payload carrying structured fields for one log call."""
    return {"fields": fields}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (ISO-8601 UTC), level, logger, msg, and the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}) or {})
        for k, v in record.__dict__.items():
            if k not in _STD and k != "fields":
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL logger: msg key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        base = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if fields:
            base += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


def setup_logging(cfg: LogConfig) -> None:
    """Route the root logger to stderr in the configured format (idempotent)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_mystocks", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._mystocks = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if cfg.format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(cfg.level.upper())
    logging.captureWarnings(True)  # Python warnings become records in the same format
    for noisy in ("aiokafka", "faust", "mode", "numba"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
