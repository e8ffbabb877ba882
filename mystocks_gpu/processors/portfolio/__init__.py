"""Portfolio workload: the ``optimize`` job kind (batched optimisation over replayed bars)."""
