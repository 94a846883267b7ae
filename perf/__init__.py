"""Serving harness and measurement: server launcher, load generator, benchmark, simulator, profiler."""
