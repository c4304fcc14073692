"""Scoring methods: one score per cached token from attention or key statistics, top-k per KV head."""
