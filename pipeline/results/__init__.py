"""A run's results: the Parquet store, per-unit summaries, the regression gate, run sources and plots."""
