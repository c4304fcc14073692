"""Multimodal-Mind2Web: the parquet loader, element/operation scoring, GUI-KV's blocks protocol."""
