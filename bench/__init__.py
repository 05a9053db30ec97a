"""Benchmarks: `python -m bench` (or `make bench`). Each prints its own baseline from the
same run, so ratios hold on whatever machine runs them."""
