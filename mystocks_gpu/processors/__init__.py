"""The workloads: stream processors (pure ``(columnar batch, state) -> (outputs, state)``) and the
job runners that drive the same operators over replays, one module or package per workload."""
