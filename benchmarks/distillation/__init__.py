"""Distillation benchmark (FMNIST-CPU): cs-only, mi, mi+cs, mi* for each base method at equal wall time,
plus a student trained on the full real data. Run with ``python -m benchmarks.distillation``."""
