"""Per-record status codes of the batch codec and their DLQ reasons."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """Per-record outcome: decoding 0-11, :func:`validate_ticks` 32-43; ``.message``: DLQ reason."""

    message: str

    def __new__(cls, code: int, message: str) -> Status:
        obj = int.__new__(cls, code)
        obj._value_ = code
        obj.message = message
        return obj

    OK = 0, "ok"
    BAD_MAGIC = 1, "bad magic byte (expected 0): not Confluent-framed Avro"
    UNKNOWN_SCHEMA_ID = 2, "unknown schema id"
    WRONG_SCHEMA = 3, "schema id of another known schema (or an older version), not the expected one"
    TRUNCATED = 4, "truncated record"
    VARINT_OVERFLOW = 5, "varint overflow (more than 64 bits, or an int beyond 32 bits)"
    BAD_ENUM = 6, "enum index out of range"
    TRAILING_BYTES = 7, "trailing bytes after the record"
    NEGATIVE_LENGTH = 8, "negative string length"
    INVALID_UTF8 = 9, "string is not valid UTF-8"
    INVALID_BOOLEAN = 10, "boolean byte is not 0 or 1"
    NULL_VALUE = 11, "record has no value (tombstone)"
    TS_TOO_OLD = 32, "ts_event is before 2000-01-01"
    TS_IN_FUTURE = 33, "ts_event is too far in the future"
    EMPTY_SYMBOL = 34, "symbol is empty"
    BAD_PRICE = 35, "price must be finite and > 0"
    BAD_SIZE = 36, "size must be finite and >= 0"
    BAD_BID = 37, "bid must be finite and > 0"
    BAD_ASK = 38, "ask must be finite and > 0"
    BAD_BID_SIZE = 39, "bid_size must be finite and >= 0"
    BAD_ASK_SIZE = 40, "ask_size must be finite and >= 0"
    CROSSED_QUOTE = 41, "crossed quote: bid > ask"
    BAD_SIDE = 42, "side must be -1, 0 or 1"
    TRADE_ZERO_SIZE = 43, "a TRADE must have size > 0"
    SYMBOL_TOO_LONG = 44, "symbol is longer than 256 bytes (UTF-8)"


#: DLQ reason per status code
STATUS_MESSAGES: dict[int, str] = {int(s): s.message for s in Status}


def status_message(code: int) -> str:
    """The DLQ reason string for a status code."""
    return STATUS_MESSAGES.get(int(code), f"unknown status code {int(code)}")
