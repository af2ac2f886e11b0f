"""Multi-view invariance cases: the protocol registered in harness/protocols/multiview.py, one test per case."""

from harness.plugin import benchmark_test

test_multiview = benchmark_test("multiview")
