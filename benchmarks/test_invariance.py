"""Synthetic-invariance cases: the protocol registered in harness/protocols/invariance.py, one test per case."""

from harness.plugin import benchmark_test

test_invariance = benchmark_test("invariance")
