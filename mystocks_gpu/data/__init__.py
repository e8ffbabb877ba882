"""Market data in and out of topics for users: history files (CSV/Parquet) validated and loaded,
a synthetic tick generator, and a decoding topic reader (``mystocks-gpu load|produce|consume``)."""
