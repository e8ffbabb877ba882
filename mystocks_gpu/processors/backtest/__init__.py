"""Workload 1, historical backtests: the job spec, the ``backtest`` job kind (bars replayed from a
topic through the grid engine of :mod:`mystocks_gpu.gpu_ops.backtest`) and the report writer."""
