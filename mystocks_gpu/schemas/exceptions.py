"""Errors of the schemas layer (encoding and decoding records)."""

from mystocks_gpu.exceptions import MyStocksError


class SchemaError(MyStocksError):
    """A schema is missing, malformed, or disagrees with the manifest."""


class DecodeError(MyStocksError):
    """Bytes could not be decoded as a Confluent-framed Avro record."""


class UnknownSchemaId(DecodeError):
    """The 4-byte schema id in a record's prefix is not in the manifest or registry."""


class ValidationError(MyStocksError):
    """A decoded record has values outside its contract (NaN price, future timestamp...)."""
