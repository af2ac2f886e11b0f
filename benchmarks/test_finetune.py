"""Fine-tuning cases: the protocol registered in harness/protocols/finetune/, one test per case."""

from harness.plugin import benchmark_test

test_finetune = benchmark_test("finetune")
