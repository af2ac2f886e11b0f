"""Fine-tuning dynamics cases: per-layer weight distance, CKA to init and layer importance
after fine-tuning (harness/protocols/dynamics.py)."""

from harness.plugin import benchmark_test

test_dynamics = benchmark_test("dynamics")
