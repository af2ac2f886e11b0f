"""k-NN cases: the protocol registered in harness/protocols/knn.py, one test per case."""

from harness.plugin import benchmark_test

test_knn = benchmark_test("knn")
