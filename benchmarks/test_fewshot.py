"""Prototypical few-shot cases: the protocol registered in harness/protocols/fewshot.py, one test per case."""

from harness.plugin import benchmark_test

test_fewshot = benchmark_test("fewshot")
