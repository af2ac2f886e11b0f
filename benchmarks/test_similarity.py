"""Similarity cases: layer-wise CKA / SVCCA to a reference model (harness/protocols/similarity.py)."""

from harness.plugin import benchmark_test

test_similarity = benchmark_test("similarity")
