"""Tally: real-time analytics on Faust (exact sliding top-K, server-metric rollups)."""

__version__ = "0.1.0"
