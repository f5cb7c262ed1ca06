"""The pieces of ``tools/bench_trunk.py``: models and cells, measuring, the op profile, the report."""
