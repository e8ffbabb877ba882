"""Workload 6, order-execution optimisation, wired into the platform: the execution stream
processor (``exec_processor``: ``orders.parent`` -> ``orders.schedule`` + ``orders.scored``), the
market-parameter feed (``market_params_feed``: estimate from replayed data, publish, read back),
the Avro record mapping (``order_records``) and the ``execsim`` job kind (``execsim_job``,
``execsim_report``). The maths live in :mod:`mystocks_gpu.gpu_ops.execution`."""
