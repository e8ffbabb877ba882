"""Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary body.

:class:`AvroCodec` is the generic per-record codec for every catalog schema (fastavro does the
Avro body). Hot topics additionally have a vectorised batch codec (``schemas.batch_codec``) that is
checked byte-for-byte against this one.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro

from mystocks_gpu.schemas.exceptions import DecodeError, SchemaError
from mystocks_gpu.schemas.schema_store import SchemaInfo, SchemaStore, default_store

MAGIC = 0
PREFIX = struct.Struct(">bI")
PREFIX_LEN = PREFIX.size  # 5 bytes


def frame(schema_id: int, body: bytes) -> bytes:
    """Prefix an Avro body with the magic byte and schema id."""
    return PREFIX.pack(MAGIC, schema_id) + body


def unframe(data: bytes | memoryview | None) -> tuple[int, memoryview]:
    """Split a framed value into ``(schema_id, body)``; :class:`DecodeError` if not framed."""
    if data is None:
        raise DecodeError("record has no value (tombstone)")
    if len(data) < PREFIX_LEN:
        raise DecodeError(f"value of {len(data)} bytes is shorter than the 5-byte Confluent prefix")
    magic, schema_id = PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise DecodeError(f"bad magic byte {magic} (expected 0): not Confluent-framed Avro")
    return schema_id, memoryview(data)[PREFIX_LEN:]


class AvroCodec:
    """Encode/decode records of any known schema in the Confluent wire format."""

    def __init__(self, store: SchemaStore | None = None) -> None:
        self.store = store or default_store()

    def schema_id(self, name: str) -> int:
        """The id the writer puts in the prefix for schema ``name``."""
        return self.store.by_name(name).id

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        """Framed bytes for ``record`` under the current schema ``name``.

        Raises :class:`SchemaError` when the record does not fit the schema.
        """
        info = self.store.by_name(name)
        buf = io.BytesIO()
        buf.write(PREFIX.pack(MAGIC, info.id))
        try:
            fastavro.schemaless_writer(buf, info.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise SchemaError(f"record does not fit {info.name}: {type(exc).__name__}: {exc}") from None
        return buf.getvalue()

    def decode(self, data: bytes | memoryview | None, expect: str | None = None) -> dict[str, Any]:
        """Decode a framed value; with ``expect``, the writer schema must be that schema.

        Raises :class:`UnknownSchemaId` or :class:`DecodeError` with the cause.
        """
        return self.decode_with_info(data, expect)[1]

    def decode_with_info(self, data: bytes | memoryview | None,
                         expect: str | None = None) -> tuple[SchemaInfo, dict[str, Any]]:
        """Like :meth:`decode`, also returning the writer's :class:`SchemaInfo`."""
        schema_id, body = unframe(data)
        info = self.store.by_id(schema_id)
        if expect is not None:
            want = self.store.by_name(expect).name
            if info.name != want:
                raise DecodeError(f"schema id {schema_id} is {info.name}, expected {want}")
        stream = io.BytesIO(body)
        try:
            rec = fastavro.schemaless_reader(stream, info.parsed, None)
        except Exception as exc:  # fastavro raises many types on garbage
            raise DecodeError(f"corrupt Avro body for {info.name}: {type(exc).__name__}: {exc}") from None
        if stream.tell() != len(body):
            raise DecodeError(f"{len(body) - stream.tell()} trailing bytes after a {info.name} record")
        return info, rec  # type: ignore[return-value]


__all__ = ["AvroCodec", "frame", "unframe", "MAGIC", "PREFIX_LEN", "SchemaError"]
