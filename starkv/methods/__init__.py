"""Compression methods owned by the starkv library (STaR-KV); importing registers them."""

from starkv.methods import starkv  # noqa: F401
