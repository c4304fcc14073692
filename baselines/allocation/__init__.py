"""Budget allocation over layers or KV heads, wrapping (or built on) a scorer."""
