"""Compression methods owned by the starkv library (STaR-KV); importing registers them."""
