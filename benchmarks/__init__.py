"""Benchmark scripts for sb3_gmm; ``benchmarks._suite`` holds the reusable GMM test suite and Monte Carlo truth."""
