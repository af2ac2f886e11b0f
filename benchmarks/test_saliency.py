"""Saliency cases: the protocol registered in harness/protocols/saliency.py, one test per case."""

from harness.plugin import benchmark_test

test_saliency = benchmark_test("saliency")
