"""Feature-inversion cases: the protocol registered in harness/protocols/inversion.py, one test
per case."""

from harness.plugin import benchmark_test

test_inversion = benchmark_test("inversion")
