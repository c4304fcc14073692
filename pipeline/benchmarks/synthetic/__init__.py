"""Generated benchmarks: synthetic grounding screens and the launcher episodes the micro agent learns."""
