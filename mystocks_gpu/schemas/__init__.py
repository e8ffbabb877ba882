"""Avro contracts (``avsc/``), schema ids (manifest or Schema Registry) and codecs."""

from mystocks_gpu.schemas.codec import MAGIC, PREFIX_LEN, AvroCodec, frame, unframe
from mystocks_gpu.schemas.exceptions import (
    DecodeError,
    SchemaError,
    UnknownSchemaId,
    ValidationError,
)
from mystocks_gpu.schemas.schema_store import SchemaInfo, SchemaStore, default_store, schema_store
from mystocks_gpu.schemas.validate import validate

__all__ = [
    "AvroCodec", "DecodeError", "MAGIC", "PREFIX_LEN", "SchemaError", "SchemaInfo", "SchemaStore",
    "UnknownSchemaId", "ValidationError", "default_store", "frame", "schema_store", "unframe", "validate",
]
