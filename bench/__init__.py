"""Benchmarks that are scripts, not part of the phalanx package (see bench/peers)."""
