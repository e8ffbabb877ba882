"""Avro record schema -> field plans the codec compiler works from; the schema fingerprint."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastavro.schema import fingerprint, to_parsing_canonical_form

from mystocks_gpu.schemas.exceptions import SchemaError

_PRIMS = ("string", "long", "int", "double", "float", "boolean")


@dataclass(frozen=True)
class FieldPlan:
    """One record field as the compiler sees it: ``kind`` in string/long/int/double/float/boolean/
    enum/map_double; ``symbols`` for enums."""

    name: str
    kind: str
    symbols: tuple[str, ...] = ()


def plan_schema(parsed: Mapping[str, Any]) -> list[FieldPlan]:
    """Field plans of a parsed record schema; :class:`SchemaError` for unsupported field types."""
    if not isinstance(parsed, Mapping) or parsed.get("type") != "record":
        raise SchemaError("batch codec needs a record schema")
    named = parsed.get("__named_schemas", {})
    plans = []
    for f in parsed["fields"]:
        t = f["type"]
        if isinstance(t, str) and t not in _PRIMS and t in named:
            t = named[t]
        if isinstance(t, Mapping) and "logicalType" not in t:
            tt = t.get("type")
            if tt in _PRIMS:
                t = tt
            elif tt == "enum":
                plans.append(FieldPlan(f["name"], "enum", tuple(t["symbols"])))
                continue
            elif tt == "map" and t.get("values") in ("double", {"type": "double"}):
                plans.append(FieldPlan(f["name"], "map_double"))
                continue
        if isinstance(t, str) and t in _PRIMS:
            plans.append(FieldPlan(f["name"], t))
            continue
        raise SchemaError(f"{parsed.get('name')}.{f['name']}: field type {t!r} is not supported by "
                          "the batch codec (primitives, enums and map<double> only)")
    return plans


def schema_fingerprint(parsed: Mapping[str, Any]) -> str:
    """SHA-256 of the parsing canonical form: the compile-cache key."""
    return fingerprint(to_parsing_canonical_form(dict(parsed)), "SHA-256")
