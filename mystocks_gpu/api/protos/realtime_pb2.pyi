from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartFrom(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    START_FROM_LATEST: _ClassVar[StartFrom]
    START_FROM_EARLIEST: _ClassVar[StartFrom]
    START_FROM_TIME: _ClassVar[StartFrom]
    START_FROM_OFFSET: _ClassVar[StartFrom]
START_FROM_LATEST: StartFrom
START_FROM_EARLIEST: StartFrom
START_FROM_TIME: StartFrom
START_FROM_OFFSET: StartFrom

class SubscriptionRequest(_message.Message):
    __slots__ = ("symbols", "topic", "start", "start_time_ns", "start_offset", "max_batch", "max_records")
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    START_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    START_OFFSET_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORDS_FIELD_NUMBER: _ClassVar[int]
    symbols: _containers.RepeatedScalarFieldContainer[str]
    topic: str
    start: StartFrom
    start_time_ns: int
    start_offset: int
    max_batch: int
    max_records: int
    def __init__(self, symbols: _Optional[_Iterable[str]] = ..., topic: _Optional[str] = ..., start: _Optional[_Union[StartFrom, str]] = ..., start_time_ns: _Optional[int] = ..., start_offset: _Optional[int] = ..., max_batch: _Optional[int] = ..., max_records: _Optional[int] = ...) -> None: ...

class Tick(_message.Message):
    __slots__ = ("symbol", "ts_event_ns", "seq", "kind", "price", "size", "side", "bid", "ask", "bid_size", "ask_size", "partition", "offset")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    TS_EVENT_NS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    BID_FIELD_NUMBER: _ClassVar[int]
    ASK_FIELD_NUMBER: _ClassVar[int]
    BID_SIZE_FIELD_NUMBER: _ClassVar[int]
    ASK_SIZE_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    ts_event_ns: int
    seq: int
    kind: str
    price: float
    size: float
    side: int
    bid: float
    ask: float
    bid_size: float
    ask_size: float
    partition: int
    offset: int
    def __init__(self, symbol: _Optional[str] = ..., ts_event_ns: _Optional[int] = ..., seq: _Optional[int] = ..., kind: _Optional[str] = ..., price: _Optional[float] = ..., size: _Optional[float] = ..., side: _Optional[int] = ..., bid: _Optional[float] = ..., ask: _Optional[float] = ..., bid_size: _Optional[float] = ..., ask_size: _Optional[float] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class Bar(_message.Message):
    __slots__ = ("symbol", "ts_event_ns", "interval_ns", "open", "high", "low", "close", "volume", "vwap", "trades", "partition", "offset")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    TS_EVENT_NS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_NS_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    VWAP_FIELD_NUMBER: _ClassVar[int]
    TRADES_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    ts_event_ns: int
    interval_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    vwap: float
    trades: int
    partition: int
    offset: int
    def __init__(self, symbol: _Optional[str] = ..., ts_event_ns: _Optional[int] = ..., interval_ns: _Optional[int] = ..., open: _Optional[float] = ..., high: _Optional[float] = ..., low: _Optional[float] = ..., close: _Optional[float] = ..., volume: _Optional[float] = ..., vwap: _Optional[float] = ..., trades: _Optional[int] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class MarketData(_message.Message):
    __slots__ = ("topic", "ticks", "bars")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    TICKS_FIELD_NUMBER: _ClassVar[int]
    BARS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    ticks: _containers.RepeatedCompositeFieldContainer[Tick]
    bars: _containers.RepeatedCompositeFieldContainer[Bar]
    def __init__(self, topic: _Optional[str] = ..., ticks: _Optional[_Iterable[_Union[Tick, _Mapping]]] = ..., bars: _Optional[_Iterable[_Union[Bar, _Mapping]]] = ...) -> None: ...

class FeatureRequest(_message.Message):
    __slots__ = ("symbols", "features", "start", "start_time_ns", "max_records")
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    START_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORDS_FIELD_NUMBER: _ClassVar[int]
    symbols: _containers.RepeatedScalarFieldContainer[str]
    features: _containers.RepeatedScalarFieldContainer[str]
    start: StartFrom
    start_time_ns: int
    max_records: int
    def __init__(self, symbols: _Optional[_Iterable[str]] = ..., features: _Optional[_Iterable[str]] = ..., start: _Optional[_Union[StartFrom, str]] = ..., start_time_ns: _Optional[int] = ..., max_records: _Optional[int] = ...) -> None: ...

class FeatureVector(_message.Message):
    __slots__ = ("symbol", "ts_event_ns", "seq", "values", "partition", "offset")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    TS_EVENT_NS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    ts_event_ns: int
    seq: int
    values: _containers.ScalarMap[str, float]
    partition: int
    offset: int
    def __init__(self, symbol: _Optional[str] = ..., ts_event_ns: _Optional[int] = ..., seq: _Optional[int] = ..., values: _Optional[_Mapping[str, float]] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class FeatureResponse(_message.Message):
    __slots__ = ("vectors", "missing")
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    vectors: _containers.RepeatedCompositeFieldContainer[FeatureVector]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, vectors: _Optional[_Iterable[_Union[FeatureVector, _Mapping]]] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...
