"""The JSON Schema (draft 2020-12 / draft-07 compatible) of each WebSocket message type of ``/ws``.

Every data message is ``{"type", "seq", "ts", "data"}`` (+ ``symbol`` for ``market_data`` and
``calc_result``, ``job_id`` for ``task_status`` and job alerts): ``ts`` is when the control app queued
it (ns since epoch), ``seq`` the client's message counter (a gap = dropped messages, announced by a
``dropped`` notice). ``data`` per type:

* ``market_data`` -- a record of ``jobs.market_data_topic`` (``md.ticks``: ``mystocks.md.Tick``).
* ``calc_result`` -- a record of ``jobs.calc_result_topic`` (``features.ticks``: ``FeatureVector``;
  a value whose window has not filled is ``null``).
* ``task_status`` -- a job's new state (the ``job.status`` record, ``state`` lower case, ``result``
  parsed JSON once succeeded).
* ``alert`` -- an operational alert (``mystocks.ops.Alert``), filterable by ``severity``.

Numbers that are not finite are sent as ``null`` (strict JSON).
"""

from __future__ import annotations

from typing import Any

SEVERITIES = ("INFO", "WARNING", "CRITICAL")
_NUM = {"type": ["number", "null"]}
_INT = {"type": "integer"}
_STR = {"type": "string"}


def _envelope(mtype: str, data: dict[str, Any], extra: dict[str, Any] | None = None,
              required_extra: tuple[str, ...] = ()) -> dict[str, Any]:
    props = {"type": {"const": mtype}, "seq": {"type": "integer", "minimum": 1},
             "ts": {"type": "integer", "description": "ns since epoch, when queued for the client"},
             "data": data, **(extra or {})}
    return {"$schema": "http://json-schema.org/draft-07/schema#", "title": mtype, "type": "object",
            "properties": props, "required": ["type", "seq", "ts", "data", *required_extra],
            "additionalProperties": False}


TICK = {"type": "object", "required": ["symbol", "ts_event", "seq", "kind", "price", "size", "side", "bid", "ask",
                                       "bid_size", "ask_size"],
        "properties": {"symbol": _STR, "ts_event": _INT, "seq": _INT, "kind": {"enum": ["TRADE", "QUOTE"]},
                       "price": _NUM, "size": _NUM, "side": {"enum": [-1, 0, 1]}, "bid": _NUM, "ask": _NUM,
                       "bid_size": _NUM, "ask_size": _NUM}}
FEATURES = {"type": "object", "required": ["symbol", "ts_event", "seq", "ts_ingest", "values"],
            "properties": {"symbol": _STR, "ts_event": _INT, "seq": _INT, "ts_ingest": _INT,
                           "values": {"type": "object", "additionalProperties": _NUM}}}
STATUS = {"type": "object", "required": ["job_id", "ts_event", "kind", "state", "progress", "message", "error", "worker",
                                         "cached", "result"],
          "properties": {"job_id": _STR, "ts_event": _INT, "kind": _STR,
                         "state": {"enum": ["queued", "running", "succeeded", "failed", "cancelled", "rejected"]},
                         "progress": {"type": "number", "minimum": 0, "maximum": 1}, "message": _STR,
                         "error": {"type": ["string", "null"]}, "worker": {"type": ["string", "null"]},
                         "cached": {"type": "boolean"}, "result": {}}}
ALERT = {"type": "object", "required": ["alert_id", "ts_event", "kind", "severity", "source", "message", "value",
                                        "threshold", "labels"],
         "properties": {"alert_id": _STR, "ts_event": _INT, "kind": _STR, "severity": {"enum": list(SEVERITIES)},
                        "source": _STR, "message": _STR, "value": _NUM, "threshold": _NUM,
                        "labels": {"type": "object", "additionalProperties": _STR}}}

MESSAGE_SCHEMAS: dict[str, dict[str, Any]] = {
    "market_data": _envelope("market_data", TICK, {"symbol": _STR}, ("symbol",)),
    "calc_result": _envelope("calc_result", FEATURES, {"symbol": _STR}, ("symbol",)),
    "task_status": _envelope("task_status", STATUS, {"job_id": _STR}, ("job_id",)),
    "alert": _envelope("alert", ALERT, {"job_id": _STR}),
}
