"""What every benchmark shares: the Benchmark interface and registry, storage readers, scoring helpers."""
