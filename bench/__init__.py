"""Benchmarks: `python -m bench.bench_loop`."""
