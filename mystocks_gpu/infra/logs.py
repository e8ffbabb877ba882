"""Structured logging: ``key=value`` text for people, one JSON object per line for machines.

Use ``log.info("batch committed", extra={"fields": {"records": n}})`` or :func:`kv` to attach
structured fields. Fields that hold for a whole process (``worker``, ``processor``, ``group``) are set
once with :func:`set_process_fields`; fields that hold for a stretch of work in one thread or task
(``job_id``, ``chunk``, ``partition``) with ``with log_context(job_id=...):`` (context variables).
Both appear on every record inside, in JSON as top-level keys (see README "Monitoring" for how the
JSON lines are aggregated). Secrets never reach a log line: configs are logged via ``Settings.masked()``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from mystocks_gpu.infra.config import LogConfig

_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


_PROCESS_FIELDS: dict[str, Any] = {}
_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("mystocks_log_context", default=None)


def set_process_fields(**fields: Any) -> None:
    """Fields added to every record of this process (e.g. ``worker=``, ``processor=``); None removes one."""
    for k, v in fields.items():
        if v is None:
            _PROCESS_FIELDS.pop(k, None)
        else:
            _PROCESS_FIELDS[k] = v


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Fields added to every record logged inside the block by this thread/task (``job_id=``, ``partition=``)."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **fields})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def context_fields() -> dict[str, Any]:
    """The process and context fields in force here (context wins)."""
    return {**_PROCESS_FIELDS, **(_CONTEXT.get() or {})}


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
        out.update(context_fields())
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
        fields = {**context_fields(), **(getattr(record, "fields", None) or {})}
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
