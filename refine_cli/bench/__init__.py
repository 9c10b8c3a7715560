"""Measurements behind `refine-cli bench` and the scripts in benchmarks/: timing medians and peak memory."""
