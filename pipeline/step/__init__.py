"""Evaluating one step: prompt, prefill, compress, decode, score (per unit, shared sweep, batched decode, multi-call)."""
