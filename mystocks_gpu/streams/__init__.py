"""The streaming runtime: batch consumer, exactly-once processing, state, DLQ, replay."""

from mystocks_gpu.streams.batching import BatchAccumulator, RawBatch
from mystocks_gpu.streams.processor import Columns, Decoded, Outputs, Processor, Rejected
from mystocks_gpu.streams.runtime_config import AT_LEAST_ONCE, EXACTLY_ONCE, RuntimeConfig

__all__ = ["AT_LEAST_ONCE", "BatchAccumulator", "Columns", "Decoded", "EXACTLY_ONCE", "Outputs", "Processor",
           "RawBatch", "Rejected", "RuntimeConfig"]
