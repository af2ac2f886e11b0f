"""Linear-probe cases: the protocol registered in harness/protocols/linear.py, one test per case."""

from harness.plugin import benchmark_test

test_linear = benchmark_test("linear")
