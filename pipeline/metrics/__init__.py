"""Per-step metrics declared once (the registry) and the row schema, units and labels built from them."""
