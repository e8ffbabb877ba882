"""Workload 3, ML training and live inference: the ``train`` job kind (walk-forward training on
replayed topics, long-short backtest of the out-of-sample predictions, model published to the
registry), the model registry on the compacted ``models`` topic, and the ``signals`` stream
processor that scores feature vectors with the latest model version and hot-swaps versions.

Modules: :mod:`.train_spec` (the validated spec), :mod:`.training_data` (replay -> panel ->
labels -> row policy), :mod:`.ls_backtest` (long-short book through the backtest engine),
:mod:`.train_job` (the runner and ``KIND``; its docstring documents the result dict),
:mod:`.train_report` (metrics table, PNG/HTML report), :mod:`.model_registry` (parts, assembly,
hash checks, publish/read), :mod:`.model_source` (where the processor gets versions),
:mod:`.signals_processor` (the stream processor and its hot-swap rule).
"""
