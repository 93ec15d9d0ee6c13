"""The libprefork benchmark harness (driven by bench/run)."""
