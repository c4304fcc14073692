"""Reference points: the full cache and random eviction (no paper)."""
