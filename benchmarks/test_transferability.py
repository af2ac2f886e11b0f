"""Transferability cases: LogME, LEEP, N-LEEP, Fréchet distance (harness/protocols/transferability.py)."""

from harness.plugin import benchmark_test

test_transferability = benchmark_test("transferability")
