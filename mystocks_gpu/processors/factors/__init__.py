"""Workload 4, factor mining, wired to the platform: the job kinds ``factors`` and
``factors_mine`` (:mod:`.factor_job`), their specs (:mod:`.factor_spec`), bars replayed into a
panel (:mod:`.factor_bars`), the output topics ``factors.values`` (Arrow IPC frames) and
``results.factors`` (Avro) with their readers (:mod:`.factor_topics`), and the printed table /
HTML report (:mod:`.factor_report`). The maths live in :mod:`mystocks_gpu.gpu_ops.factors`."""
