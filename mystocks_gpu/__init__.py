"""mystocks-gpu: GPU-accelerated quant computing as a streaming dataflow on Apache Kafka."""

__version__ = "0.1.0"

from mystocks_gpu.exceptions import MyStocksError  # noqa: E402
from mystocks_gpu.infra.compile_cache import configure_numba_cache  # noqa: E402

configure_numba_cache()

__all__ = ["MyStocksError", "__version__"]
