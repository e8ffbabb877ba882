"""mystocks-gpu: GPU-accelerated quant computing as a streaming dataflow on Apache Kafka."""

from mystocks_gpu.exceptions import MyStocksError

__all__ = ["MyStocksError", "__version__"]
__version__ = "0.1.0"
