"""The ``mystocks-gpu`` command: one module per command group, wired in :mod:`.main`.

Groups: ``stack`` (local Kafka + Redis), ``topics`` (catalog), ``data`` (produce/load/consume),
``run`` (stream processors), ``control`` (control app, job workers), ``submit`` (submit/jobs/job/
cancel), ``config`` (effective settings). The CLI is thin: it parses, loads settings and calls the
layers; every :class:`~mystocks_gpu.exceptions.MyStocksError` is one line on stderr.
"""

from mystocks_gpu.cli.main import main

__all__ = ["main"]
