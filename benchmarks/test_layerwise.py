"""Layer-wise cases: k-NN on each stage's pooled features (harness/protocols/layerwise.py)."""

from harness.plugin import benchmark_test

test_layerwise = benchmark_test("layerwise")
