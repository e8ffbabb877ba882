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
    enum/map_double/array_record; ``symbols`` for enums; ``fields`` (the item record's plans, each
    of a primitive or enum kind) for ``array_record`` (an array of records, encoder only)."""

    name: str
    kind: str
    symbols: tuple[str, ...] = ()
    fields: tuple[FieldPlan, ...] = ()


def _resolve(t: Any, named: Mapping[str, Any]) -> Any:
    return named[t] if isinstance(t, str) and t not in _PRIMS and t in named else t


def _plan_field(owner: str, name: str, t: Any, named: Mapping[str, Any], nested: bool) -> FieldPlan:
    """The plan of one field of type ``t``; ``nested``: inside an array's item record (primitives
    and enums only there)."""
    t = _resolve(t, named)
    if isinstance(t, Mapping) and "logicalType" not in t:
        tt = t.get("type")
        if tt in _PRIMS:
            t = tt
        elif tt == "enum":
            return FieldPlan(name, "enum", tuple(t["symbols"]))
        elif tt == "map" and t.get("values") in ("double", {"type": "double"}) and not nested:
            return FieldPlan(name, "map_double")
        elif tt == "array" and not nested:
            item = _resolve(t.get("items"), named)
            if isinstance(item, Mapping) and item.get("type") == "record":
                sub = tuple(_plan_field(f"{owner}.{name}", f["name"], f["type"], named, True)
                            for f in item["fields"])
                return FieldPlan(name, "array_record", fields=sub)
    if isinstance(t, str) and t in _PRIMS:
        return FieldPlan(name, t)
    raise SchemaError(f"{owner}.{name}: field type {t!r} is not supported by the batch codec "
                      "(primitives, enums, map<double> and arrays of records of those only)")


def plan_schema(parsed: Mapping[str, Any]) -> list[FieldPlan]:
    """Field plans of a parsed record schema; :class:`SchemaError` for unsupported field types."""
    if not isinstance(parsed, Mapping) or parsed.get("type") != "record":
        raise SchemaError("batch codec needs a record schema")
    named = parsed.get("__named_schemas", {})
    return [_plan_field(str(parsed.get("name")), f["name"], f["type"], named, False) for f in parsed["fields"]]


def schema_fingerprint(parsed: Mapping[str, Any]) -> str:
    """SHA-256 of the parsing canonical form: the compile-cache key."""
    return fingerprint(to_parsing_canonical_form(dict(parsed)), "SHA-256")
