"""Workload 5, streaming: the risk processor (``mystocks-gpu run risk``): prices + positions ->
``risk.metrics`` + ``alerts``. See ``processor.py`` for the design (positions as a broadcast side
input applied at their event time), ``config.py`` for the settings, ``positions.py`` for the
positions record and its validation, ``book.py`` for the state and its changelog."""
