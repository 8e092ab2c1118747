"""Synthesis benchmark: what the inversion makes, without KD (``python -m benchmarks.synthesis``)."""
